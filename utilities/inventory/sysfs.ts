/**
 * Never-throwing file helpers rooted at a configurable directory, so that
 * collectors read `/sys`, `/proc`, `/dev`, `/run` of the real machine in
 * production and a fixture tree in tests.
 */
import type { Stats } from "node:fs";
import { lstat, readFile, readdir, readlink, stat } from "node:fs/promises";
import path from "node:path";

export class HostFs {
  readonly root: string;

  constructor(root = "/") {
    this.root = path.resolve(root);
  }

  /** Host path (absolute, as the collectors think of it) -> path on this machine. */
  p(hostPath: string): string {
    return path.join(this.root, hostPath);
  }

  /** Path on this machine -> host path; null when outside the root. */
  toHost(localPath: string): string | null {
    const rel = path.relative(this.root, localPath);
    if (rel.startsWith("..") || path.isAbsolute(rel)) return null;
    return "/" + rel;
  }

  async read(hostPath: string, maxBytes = 4 * 1024 * 1024): Promise<string | null> {
    try {
      const buf = await readFile(this.p(hostPath));
      return buf.subarray(0, maxBytes).toString("utf8");
    } catch {
      return null;
    }
  }

  /** File content with surrounding whitespace removed; null if unreadable. */
  async readTrim(hostPath: string): Promise<string | null> {
    const text = await this.read(hostPath);
    return text === null ? null : text.trim();
  }

  async list(hostPath: string): Promise<string[]> {
    try {
      return (await readdir(this.p(hostPath))).sort();
    } catch {
      return [];
    }
  }

  async readlink(hostPath: string): Promise<string | null> {
    try {
      return await readlink(this.p(hostPath));
    } catch {
      return null;
    }
  }

  /** Basename of a symlink's target (e.g. the driver name behind `device/driver`). */
  async linkBasename(hostPath: string): Promise<string | null> {
    const target = await this.readlink(hostPath);
    return target === null ? null : path.basename(target);
  }

  async stat(hostPath: string): Promise<Stats | null> {
    try {
      return await stat(this.p(hostPath));
    } catch {
      return null;
    }
  }

  async lstat(hostPath: string): Promise<Stats | null> {
    try {
      return await lstat(this.p(hostPath));
    } catch {
      return null;
    }
  }

  async exists(hostPath: string): Promise<boolean> {
    return (await this.lstat(hostPath)) !== null;
  }

  async isDir(hostPath: string): Promise<boolean> {
    return (await this.stat(hostPath))?.isDirectory() ?? false;
  }
}
