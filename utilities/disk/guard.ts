/**
 * The one gate every destructive utility passes before it touches a block device: the configuration
 * must allow destructive work, and the device (or the whole disk a partition belongs to) must be in
 * the configured set. Paths are canonicalised first, so a symlink (/dev/disk/by-id/...) cannot
 * smuggle another device in.
 */
import { access, realpath } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { AgentError } from "../../core/errors.js";

export interface DeviceGuardOptions {
  readonly allowDestructive: boolean;
  /** Device paths; a trailing `*` matches by prefix (`/dev/loop*`). */
  readonly allowedDevices: readonly string[];
  /** Where sysfs is (tests point it elsewhere). */
  readonly sysRoot?: string;
}

export class DeviceGuard {
  private readonly exact = new Set<string>();
  private readonly prefixes: string[] = [];
  private readonly sysRoot: string;

  constructor(private readonly opts: DeviceGuardOptions) {
    for (const entry of opts.allowedDevices) {
      if (entry.endsWith("*")) this.prefixes.push(entry.slice(0, -1));
      else this.exact.add(entry);
    }
    this.sysRoot = opts.sysRoot ?? "/sys";
  }

  private matches(path: string, resolved: ReadonlySet<string>): boolean {
    return this.exact.has(path) || resolved.has(path) || this.prefixes.some((p) => path.startsWith(p));
  }

  /** The configured entries as real paths (`/dev/disk/by-id/...` → `/dev/sda`), read at each check. */
  private async resolvedEntries(): Promise<Set<string>> {
    const out = new Set<string>();
    for (const entry of this.exact) {
      try {
        out.add(await realpath(entry));
      } catch {
        // not present now: it can only match by its own name
      }
    }
    return out;
  }

  /** The whole disk a partition belongs to, from sysfs; undefined for a whole disk or an unknown name. */
  async parentDisk(device: string): Promise<string | undefined> {
    const name = basename(device);
    try {
      const sys = await realpath(`${this.sysRoot}/class/block/${name}`);
      const parent = basename(dirname(sys));
      // A partition's sysfs directory sits inside its disk's; a disk's parent is a bus or "block".
      await access(`${sys}/partition`);
      return `/dev/${parent}`;
    } catch {
      return undefined;
    }
  }

  /**
   * Resolves the device and checks it; returns the canonical path. Throws DESTRUCTIVE_NOT_ALLOWED or
   * DEVICE_NOT_ALLOWED (with what was asked and what it resolved to).
   */
  async check(device: string, what = "destructive work"): Promise<string> {
    if (!this.opts.allowDestructive) {
      throw new AgentError("DESTRUCTIVE_NOT_ALLOWED", `${what} on ${device} refused: allowDestructive is off`);
    }
    let canonical: string;
    try {
      canonical = await realpath(device);
    } catch (err) {
      throw new AgentError("DEVICE_NOT_ALLOWED", `${device} does not exist`, { cause: err });
    }
    const resolved = await this.resolvedEntries();
    if (this.matches(canonical, resolved)) return canonical;
    const parent = await this.parentDisk(canonical);
    if (parent !== undefined && this.matches(parent, resolved)) return canonical;
    const shown = canonical === device ? device : `${device} (${canonical})`;
    throw new AgentError("DEVICE_NOT_ALLOWED", `${what} on ${shown} refused: not in allowedDevices [${this.opts.allowedDevices.join(", ")}]`);
  }

  /** Checks every device; all or nothing. */
  async checkAll(devices: readonly string[], what?: string): Promise<string[]> {
    const out: string[] = [];
    for (const d of devices) out.push(await this.check(d, what));
    return out;
  }
}
