import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { gunzipSync } from "node:zlib";

import type { CommandResult, CommandRunner, RunOptions } from "../utilities/exec.js";
import { CommandError, execRunner, hasTool } from "../utilities/exec.js";
import { collectSystemLogs, DEFAULT_MAX_BYTES, parseTar } from "../utilities/logs/index.js";

interface Entry {
  name: string;
  size: number;
  data: Buffer;
}

/**
 * Independent ustar reader: checks magic, checksum, octal size, 512-byte
 * alignment and the two zero blocks at the end.
 */
function readTar(tar: Buffer): Entry[] {
  assert.equal(tar.length % 512, 0, "archive is made of 512-byte blocks");
  const str = (b: Buffer): string => {
    const nul = b.indexOf(0);
    return b.subarray(0, nul < 0 ? b.length : nul).toString("utf8");
  };
  const entries: Entry[] = [];
  let off = 0;
  for (;;) {
    assert.ok(off + 512 <= tar.length, "archive ends with zero blocks");
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) {
      assert.ok(tar.subarray(off, off + 1024).every((b) => b === 0), "two zero blocks at the end");
      break;
    }
    assert.equal(header.subarray(257, 263).toString("latin1"), "ustar\0", "ustar magic");
    assert.equal(header.subarray(263, 265).toString("latin1"), "00", "ustar version");
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (header[i] ?? 0);
    assert.equal(Number.parseInt(str(header.subarray(148, 156)).trim(), 8), sum, "header checksum");
    assert.equal(String.fromCharCode(header[156] ?? 0), "0", "regular file");
    const prefix = str(header.subarray(345, 500));
    const base = str(header.subarray(0, 100));
    const size = Number.parseInt(str(header.subarray(124, 136)), 8);
    const data = Buffer.from(tar.subarray(off + 512, off + 512 + size));
    entries.push({ name: prefix === "" ? base : `${prefix}/${base}`, size, data });
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return entries;
}

function decode(b64: string): { tar: Buffer; entries: Entry[] } {
  assert.match(b64, /^[A-Za-z0-9+/]*={0,2}$/, "base64");
  const gz = Buffer.from(b64, "base64");
  assert.equal(gz[0], 0x1f);
  assert.equal(gz[1], 0x8b, "gzip magic");
  const tar = gunzipSync(gz);
  return { tar, entries: readTar(tar) };
}

function names(entries: readonly Entry[]): string[] {
  return entries.map((e) => e.name);
}

function text(entries: readonly Entry[], name: string): string {
  const e = entries.find((x) => x.name === name);
  assert.ok(e, `member ${name} present`);
  return e.data.toString("utf8");
}

/** execRunner, except for the tools listed: missing or failing on purpose. */
function wrappedRunner(opts: { missing?: string[]; failing?: Record<string, CommandResult> }): CommandRunner {
  return async (cmd: string, args: readonly string[], o?: RunOptions) => {
    if (opts.missing?.includes(cmd) === true) throw new CommandError(`${cmd}: command not found`, "ENOENT", cmd);
    const f = opts.failing?.[cmd];
    if (f !== undefined) return f;
    return execRunner(cmd, args, o);
  };
}

describe("collectSystemLogs", () => {
  test("bundles command outputs and notes failures", async () => {
    const run = wrappedRunner({
      missing: ["lshw", "multipath"],
      failing: { efibootmgr: { stdout: "", stderr: "EFI variables are not supported on this system.\n", code: 2 } },
    });
    const b64 = await collectSystemLogs({ run });
    const { tar, entries } = decode(b64);
    const got = names(entries);

    for (const expected of ["cmdline", "os-release", "meminfo", "ip_addr", "df", "mount", "ps", "lsblk", "lsblk-full", "dmesg"]) {
      assert.ok(got.includes(expected), `${expected} in ${got.join(", ")}`);
    }
    assert.ok(got.includes("journal") || got.includes("journal.error") || got.some((n) => n.startsWith("var/log/")));
    assert.equal(new Set(got).size, got.length, "member names are unique");

    assert.equal(text(entries, "cmdline").trim(), (await import("node:fs")).readFileSync("/proc/cmdline", "utf8").trim());
    assert.match(text(entries, "ps"), /PID/);
    assert.match(text(entries, "df"), /Filesystem/);

    assert.ok(!got.includes("lshw"), "no output member for a missing tool");
    assert.match(text(entries, "lshw.error"), /command: lshw -quiet -json\nerror: ENOENT/);
    assert.match(text(entries, "multipath.error"), /ENOENT/);
    assert.match(text(entries, "efibootmgr.error"), /exit code: 2\nstderr:\nEFI variables are not supported/);

    assert.ok(tar.length <= DEFAULT_MAX_BYTES, "bounded by 16 MiB before gzip");
    assert.equal(got.includes("ironbus-truncated.txt"), false);
    // The round-trip reader shipped with the module agrees.
    assert.deepEqual(
      parseTar(tar).map((m) => m.name),
      got,
    );
  });

  test("GNU tar reads the bundle", { skip: false }, async (t) => {
    if (!(await hasTool("tar"))) {
      t.skip("no tar binary");
      return;
    }
    const dir = await mkdtemp(path.join(os.tmpdir(), "ironbus-logs-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const b64 = await collectSystemLogs({ run: execRunner });
    const file = path.join(dir, "logs.tar.gz");
    await writeFile(file, Buffer.from(b64, "base64"));
    const listed = await execRunner("tar", ["-tzf", file]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(listed.stdout.trim().split("\n"), names(decode(b64).entries));
  });

  test("no tools and an empty root: only error notes, still a valid archive", async (t) => {
    const root = await mkdtemp(path.join(os.tmpdir(), "ironbus-logs-empty-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    const calls: string[] = [];
    const run: CommandRunner = async (cmd) => {
      calls.push(cmd);
      throw new CommandError(`${cmd}: command not found`, "ENOENT", cmd);
    };
    const { entries } = decode(await collectSystemLogs({ run, sysRoot: root }));
    assert.ok(entries.length > 0);
    for (const e of entries) assert.match(e.name, /\.error$/, e.name);
    assert.ok(names(entries).includes("journal.error"));
    assert.ok(names(entries).includes("cmdline.error"));
    assert.ok(calls.includes("journalctl"));
  });

  test("without journalctl /var/log is bundled; extra files are added", async (t) => {
    const root = await mkdtemp(path.join(os.tmpdir(), "ironbus-logs-root-"));
    t.after(() => rm(root, { recursive: true, force: true }));
    await mkdir(path.join(root, "var/log/ironic"), { recursive: true });
    await writeFile(path.join(root, "var/log/messages"), "line 1\nline 2\n");
    await writeFile(path.join(root, "var/log/ironic/agent.log"), "agent started\n");
    const extra = path.join(root, "extra.txt");
    await writeFile(extra, "extra content");

    const run = wrappedRunner({ missing: ["journalctl"] });
    const { entries } = decode(
      await collectSystemLogs({ run, sysRoot: root, extraFiles: [extra, path.join(root, "does-not-exist")] }),
    );
    assert.equal(text(entries, "var/log/messages"), "line 1\nline 2\n");
    assert.equal(text(entries, "var/log/ironic/agent.log"), "agent started\n");
    assert.equal(text(entries, extra.slice(1)), "extra content");
    assert.match(text(entries, `${path.join(root, "does-not-exist").slice(1)}.error`), /ENOENT/);
    assert.match(text(entries, "journal.error"), /ENOENT/);
  });

  test("output is bounded per member and in total", async () => {
    const huge = "x".repeat(6 * 1024 * 1024);
    const run: CommandRunner = async (cmd) => {
      if (cmd === "journalctl" || cmd === "dmesg" || cmd === "lshw" || cmd === "ps" || cmd === "dmidecode") {
        return { stdout: `first line\n${huge}\nlast line\n`, stderr: "", code: 0 };
      }
      throw new CommandError(`${cmd}: command not found`, "ENOENT", cmd);
    };

    // Defaults: 4 MiB per member, 16 MiB in total.
    const full = decode(await collectSystemLogs({ run }));
    assert.ok(full.tar.length <= DEFAULT_MAX_BYTES, `${full.tar.length} <= 16 MiB`);
    for (const e of full.entries) assert.ok(e.size <= 4 * 1024 * 1024, `${e.name}: ${e.size}`);
    // Logs keep their newest end, other outputs their start.
    assert.match(text(full.entries, "journal"), /last line\n$/);
    assert.match(text(full.entries, "journal"), /^\[ironbus: \d+ earlier bytes dropped\]/);
    assert.match(text(full.entries, "ps"), /^first line\n/);

    // A small total budget: the archive stays under it and says what was cut.
    const small = decode(await collectSystemLogs({ run, maxBytes: 1024 * 1024, maxMemberBytes: 256 * 1024 }));
    assert.ok(small.tar.length <= 1024 * 1024, `${small.tar.length} <= 1 MiB`);
    const note = text(small.entries, "ironbus-truncated.txt");
    assert.match(note, /limited to 1048576 bytes/);
    assert.match(note, /Omitted: .*lshw/);
  });

  test("rejects when aborted", async () => {
    await assert.rejects(collectSystemLogs({ run: execRunner, signal: AbortSignal.abort() }), { name: "AbortError" });
  });
});
