/**
 * Inspection at start, before lookup (IPA's order): run the collectors and post what they found, with
 * an `error` field (null when every collector worked), to `inspectionCallbackUrl`, or, when only
 * `inspectionCollectors` is set and Ironic's API is 1.84 or later, to `<api>/v1/continue_inspection`
 * (Ironic's built-in inspection).
 *
 * Posting is tried 5 times, waiting 5, 6, 12 and 24 s (1.5 × 2^n s within [5, 30]), again on
 * connection errors, 5xx and 409. Any other 4xx, or every try failing, is logged and the agent goes on
 * to lookup, as IPA does. The answer, when there is one, helps lookup: ironic-inspector answers
 * `{"uuid"}` (passed on as lookup's node_uuid); Ironic answers in lookup's own shape, which then
 * stands for the lookup (it carries the agent token, which a second lookup would get masked).
 */
import { z } from "zod";
import type { Clock } from "../core/clock.js";
import { AgentError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { type ApiVersion, atLeast, ConnectionFailure, GATES, type HttpAnswer, ironicErrorText, type LookupResult, parseLookupAnswer, type RequestOptions } from "./client.js";
import { type CollectorDeps, DEFAULT_COLLECTORS, failureText, runCollectors } from "./collectors.js";

export const INSPECTION_ATTEMPTS = 5;
export const RETRY_MULTIPLIER_S = 1.5;
export const RETRY_MIN_S = 5;
export const RETRY_MAX_S = 30;

/** Wait after the n-th failed post (n from 1), in ms. */
export function inspectionRetryMs(n: number): number {
  return Math.min(RETRY_MAX_S, Math.max(RETRY_MIN_S, RETRY_MULTIPLIER_S * 2 ** n)) * 1000;
}

export interface InspectionTarget {
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly kind: "callback" | "continue_inspection";
}

/**
 * Where inspection data goes, or undefined when inspection is off: the callback URL when set;
 * otherwise, when collectors were set explicitly and Ironic is 1.84 or later, its continue_inspection.
 */
export function inspectionTarget(
  callbackUrl: string | undefined,
  collectors: readonly string[] | undefined,
  apiUrl: string | undefined,
  version: ApiVersion | undefined,
): InspectionTarget | undefined {
  if (callbackUrl !== undefined && callbackUrl !== "") return { url: callbackUrl, headers: {}, kind: "callback" };
  if (collectors === undefined || apiUrl === undefined || version === undefined) return undefined;
  if (!atLeast(version, GATES.continueInspection)) return undefined;
  return {
    url: `${apiUrl.replace(/\/+$/, "")}/v1/continue_inspection`,
    headers: { "X-OpenStack-Ironic-API-Version": `1.${GATES.continueInspection}` },
    kind: "continue_inspection",
  };
}

export interface InspectionSender {
  send(method: string, url: string, options?: RequestOptions): Promise<HttpAnswer>;
}

/** What the answer tells lookup. */
export type InspectionAnswer =
  | { readonly kind: "lookup"; readonly result: LookupResult }
  | { readonly kind: "uuid"; readonly nodeUuid: string }
  | { readonly kind: "none" };

const UuidAnswerSchema = z.object({ uuid: z.string().min(1) });

export function parseInspectionAnswer(body: Buffer): InspectionAnswer {
  const text = body.toString("utf8").trim();
  if (text === "") return { kind: "none" };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: "none" };
  }
  const lookup = parseLookupAnswer(value);
  if (lookup.ok) return { kind: "lookup", result: lookup.result };
  const uuid = UuidAnswerSchema.safeParse(value);
  return uuid.success ? { kind: "uuid", nodeUuid: uuid.data.uuid } : { kind: "none" };
}

export interface PostOptions {
  readonly sender: InspectionSender;
  readonly clock: Clock;
  readonly log: Logger;
  readonly target: InspectionTarget;
  readonly data: Record<string, unknown>;
  readonly attempts?: number;
  readonly signal?: AbortSignal | undefined;
  /** Called before each wait (tests read the delays). */
  readonly onRetry?: (info: { attempt: number; waitMs: number; reason: string }) => void;
}

/**
 * Posts the data with the retry policy above. Resolves with Ironic's answer on 2xx, undefined on a 4xx
 * that retrying cannot fix; rejects with INSPECTION_FAILED when every try failed.
 */
export async function postInspectionData(opts: PostOptions): Promise<InspectionAnswer | undefined> {
  const attempts = opts.attempts ?? INSPECTION_ATTEMPTS;
  let last = "";
  for (let attempt = 1; attempt <= attempts; attempt++) {
    opts.signal?.throwIfAborted();
    let answer: HttpAnswer | undefined;
    try {
      answer = await opts.sender.send("POST", opts.target.url, { body: opts.data, headers: opts.target.headers, signal: opts.signal, timeoutMs: 60_000 });
    } catch (err) {
      if (!(err instanceof ConnectionFailure)) throw err;
      last = err.message;
    }
    if (answer !== undefined) {
      if (answer.status >= 200 && answer.status < 300) {
        opts.log.info({ url: opts.target.url, status: answer.status, attempt }, "inspection data posted");
        return parseInspectionAnswer(answer.body);
      }
      last = `answered ${answer.status}: ${ironicErrorText(answer.body)}`;
      if (answer.status < 500 && answer.status !== 409) {
        opts.log.error({ url: opts.target.url, status: answer.status, reason: last }, "inspection data refused; going on with lookup");
        return undefined;
      }
    }
    if (attempt < attempts) {
      const waitMs = inspectionRetryMs(attempt);
      opts.log.warn({ url: opts.target.url, attempt, reason: last, waitMs }, "posting inspection data failed, retrying");
      opts.onRetry?.({ attempt, waitMs, reason: last });
      await opts.clock.sleep(waitMs, opts.signal);
    }
  }
  opts.signal?.throwIfAborted();
  throw new AgentError("INSPECTION_FAILED", `posting to ${opts.target.url} failed ${attempts} times; last: ${last}`);
}

export interface InspectOptions {
  readonly target: InspectionTarget;
  /** Collector names; unset: default. */
  readonly collectors: readonly string[] | undefined;
  readonly deps: CollectorDeps;
  readonly sender: InspectionSender;
  readonly clock: Clock;
  readonly log: Logger;
  readonly signal?: AbortSignal | undefined;
}

/** Collects and posts. Never throws but for an abort: inspection problems only get logged. */
export async function inspect(opts: InspectOptions): Promise<InspectionAnswer | undefined> {
  const names = opts.collectors ?? DEFAULT_COLLECTORS;
  opts.log.info({ collectors: names, url: opts.target.url }, "inspection starts");
  const { data, failures } = await runCollectors(names, opts.deps, opts.signal);
  data["error"] = failureText(failures);
  if (failures.length > 0) opts.log.warn({ failures }, "some inspection collectors failed; posting what there is");
  try {
    return await postInspectionData({ sender: opts.sender, clock: opts.clock, log: opts.log, target: opts.target, data, signal: opts.signal });
  } catch (err) {
    opts.signal?.throwIfAborted();
    const e = AgentError.from(err, "INSPECTION_FAILED");
    opts.log.error({ code: e.code, err: e.message }, "inspection failed; going on with lookup");
    return undefined;
  }
}
