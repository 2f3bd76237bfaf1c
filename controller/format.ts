/** How the CLI prints nodes and answers (plain text for people, or JSON). */
import type { FleetAnswer, NodeView } from "./controller.js";

function ago(ms: number | undefined): string {
  if (ms === undefined) return "never";
  const s = (Date.now() - ms) / 1000;
  return s < 60 ? `${s.toFixed(1)} s ago` : `${(s / 60).toFixed(1)} min ago`;
}

/** The node list as an aligned text table. */
export function nodeTable(nodes: readonly NodeView[]): string {
  const rows = [["NODE", "STATE", "LAST SEEN", "STATUS", "COMMAND", "VERSION"]];
  for (const n of [...nodes].sort((a, b) => a.node.localeCompare(b.node))) {
    rows.push([n.node, n.state, ago(n.lastSeen), n.heartbeat?.status ?? "-", n.heartbeat?.current_command ?? "-", n.hello?.version ?? n.heartbeat?.version ?? "-"]);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()).join("\n") + "\n";
}

/** Writes a fleet answer to stdout: one line per node, then the silent ones and a count. */
export function printAnswer(answer: FleetAnswer, asJson: boolean): void {
  if (asJson) {
    const out = { id: answer.id, answers: Object.fromEntries(answer.answers), silent: answer.silent, pending: answer.pending, elapsed_ms: answer.elapsedMs };
    process.stdout.write(JSON.stringify(out, null, 2) + "\n");
    return;
  }
  for (const [node, a] of answer.answers) {
    if (a.kind === "error") process.stdout.write(`${node}: ERROR ${a.error.type}: ${a.error.message}${a.error.details ? ` (${a.error.details})` : ""}\n`);
    else {
      const r = a.result;
      const body = r.command_error !== null ? `${r.command_error.type}: ${r.command_error.details || r.command_error.message}` : JSON.stringify(r.command_result);
      process.stdout.write(`${node}: ${r.command_status} ${body.length > 2000 ? `${body.slice(0, 2000)}…` : body}\n`);
    }
  }
  for (const node of answer.pending) process.stdout.write(`${node}: still running at the deadline\n`);
  for (const node of answer.silent) process.stdout.write(`${node}: no answer\n`);
  process.stdout.write(`${answer.answers.size} answered, ${answer.silent.length} silent, in ${answer.elapsedMs} ms\n`);
}

