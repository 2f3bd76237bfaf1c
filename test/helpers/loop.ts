/**
 * Real loop devices for tests: a sparse file attached with `losetup -f --show`, always detached and
 * removed afterwards (also when the test fails). Tests touch only devices made here.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";

export interface LoopDevice {
  /** /dev/loopN */
  readonly path: string;
  /** The backing sparse file. */
  readonly file: string;
  readonly sizeBytes: number;
  detach(): void;
}

const attached = new Set<LoopDevice>();
process.once("exit", () => {
  for (const dev of attached) dev.detach();
});

/** Creates a sparse file of `sizeMiB` and attaches it; pass `t` to detach in t.after. */
export function createLoopDevice(sizeMiB: number, t?: Pick<TestContext, "after">, opts: { partscan?: boolean } = {}): LoopDevice {
  const dir = mkdtempSync(join(tmpdir(), "ironbus-loop-"));
  const file = join(dir, "disk.img");
  writeFileSync(file, "");
  truncateSync(file, sizeMiB * 1024 * 1024);
  const args = ["-f", "--show", ...(opts.partscan === false ? [] : ["-P"]), file];
  const path = execFileSync("losetup", args, { encoding: "utf8" }).trim();
  if (!/^\/dev\/loop\d+$/.test(path)) throw new Error(`losetup gave ${JSON.stringify(path)}`);
  let detached = false;
  const dev: LoopDevice = {
    path,
    file,
    sizeBytes: sizeMiB * 1024 * 1024,
    detach() {
      if (detached) return;
      detached = true;
      attached.delete(dev);
      try {
        execFileSync("losetup", ["-d", path], { stdio: "ignore" });
      } catch {
        // already gone
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  attached.add(dev);
  t?.after(() => dev.detach());
  return dev;
}
