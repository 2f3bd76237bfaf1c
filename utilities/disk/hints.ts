/**
 * Root device hints, with the semantics Ironic and IPA give them (oslo.utils' specs_matcher grammar):
 *
 * - keys: `size` (integer, GiB), `rotational` (boolean), and the strings `model, vendor, serial, wwn,
 *   wwn_with_extension, wwn_vendor_extension, name, hctl, by_path, tran`;
 * - an expression is `[<op>] value`; without an operator strings compare with `s==`, `size` with `==`;
 * - numeric operators: `=` (meaning ≥, a legacy quirk), `==`, `!=`, `<`, `<=`, `>`, `>=`;
 *   string operators: `s==`, `s!=`, `s<`, `s<=`, `s>`, `s>=`, `<in>` (substring), `<all-in>` (every
 *   word is a substring), `<or>` (`<or> a <or> b`: equal to one of them);
 * - hint values and device values are lower-cased and URL-quoted before comparing, so
 *   `model: "Big Disk"` equals a device model "BIG DISK" (both become `big%20disk`);
 * - list-valued device fields (every serial or WWN a disk is known by) match when any element does;
 * - every hint must match; the first device in listing order that matches all of them wins.
 *
 * Where IPA's behaviour is an accident, ours is documented in docs/disks.md (`<all-in>` with several
 * words, `<or>` on `size`, string operators on `size`).
 */

export type HintKind = "int" | "str" | "bool";

export const HINT_KINDS: Readonly<Record<string, HintKind>> = {
  size: "int",
  model: "str",
  wwn: "str",
  serial: "str",
  vendor: "str",
  wwn_with_extension: "str",
  wwn_vendor_extension: "str",
  name: "str",
  rotational: "bool",
  hctl: "str",
  by_path: "str",
  tran: "str",
};

/** Hints that do not validate (IPA's ValueError); callers turn it into DeviceNotFound. */
export class HintError extends Error {
  override readonly name = "HintError";
}

type DeviceValue = string | number | boolean | null | undefined | readonly (string | null)[];

/** The device fields hints look at. Sizes are bytes; list-valued fields match when any element does. */
export interface HintDevice {
  readonly name: string;
  readonly size: number;
  readonly rotational?: boolean | null;
  readonly model?: string | null;
  readonly vendor?: string | null;
  readonly serial?: string | readonly string[] | null;
  readonly wwn?: string | readonly string[] | null;
  readonly wwn_with_extension?: string | readonly string[] | null;
  readonly wwn_vendor_extension?: string | readonly string[] | null;
  readonly hctl?: string | null;
  readonly by_path?: string | null;
  readonly tran?: string | null;
}

export type ParsedHint =
  | { readonly key: string; readonly kind: "int"; readonly op: string; readonly values: readonly number[] }
  | { readonly key: string; readonly kind: "str"; readonly op: string; readonly values: readonly string[] }
  | { readonly key: string; readonly kind: "bool"; readonly value: boolean };

/** Operators, longest first so `s<=` is not read as `s<` (the grammar's ordering). */
const OPERATORS = ["<all-in>", "<or>", "<in>", "s==", "s!=", "s<=", "s>=", "s<", "s>", "==", "!=", ">=", "<=", "=", ">", "<"] as const;
const NUMERIC_OPS = new Set(["=", "==", "!=", "<", "<=", ">", ">="]);
const STRING_OPS = new Set(["s==", "s!=", "s<", "s<=", "s>", "s>=", "<in>", "<all-in>", "<or>"]);

function leadingOperator(text: string): string | undefined {
  return OPERATORS.find((op) => text.startsWith(op));
}

/**
 * Python's `urllib.parse.quote` (safe "/"): UTF-8 bytes outside `A-Za-z0-9_.-~/` become %XX.
 */
export function pyQuote(text: string): string {
  let out = "";
  for (const byte of Buffer.from(text, "utf8")) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9_.\-~/]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** Splits `[<op>] values` after lower-casing; `op` is "" when there is none. */
export function splitExpression(raw: string, key: string): { op: string; values: string[] } {
  const expr = raw.trim().toLowerCase();
  if (expr === "") throw new HintError(`Root device hint ${key} expression is empty`);
  const op = leadingOperator(expr);
  if (op === undefined) return { op: "", values: [expr] };
  const rest = expr.slice(op.length).trim();
  // The grammar wants a value after the operator, and a value that is not itself an operator.
  if (rest === "" || leadingOperator(rest) !== undefined) throw new HintError(`Root device hint ${key} expression ${JSON.stringify(raw)} is not valid`);
  const values = expr
    .split(op)
    .map((v) => v.trim())
    .filter((v) => v !== "");
  return { op, values };
}

const TRUE_WORDS = new Set(["1", "t", "true", "on", "y", "yes"]);
const FALSE_WORDS = new Set(["0", "f", "false", "off", "n", "no"]);

/** oslo's strict bool_from_string; undefined when it is not a boolean. */
export function strictBool(value: unknown): boolean | undefined {
  if (typeof value === "boolean") return value;
  if (typeof value !== "string" && typeof value !== "number") return undefined;
  const text = String(value).trim().toLowerCase();
  if (TRUE_WORDS.has(text)) return true;
  if (FALSE_WORDS.has(text)) return false;
  return undefined;
}

function parseOne(key: string, expression: unknown): ParsedHint {
  const kind = HINT_KINDS[key];
  if (kind === undefined) {
    throw new HintError(`The hints "${key}" are invalid. Valid hints are: "${Object.keys(HINT_KINDS).join(", ")}"`);
  }
  if (kind === "bool") {
    const value = strictBool(expression);
    if (value === undefined) throw new HintError(`Root device hint "${key}" is not a Boolean value. Current value: ${String(expression)}`);
    return { key, kind, value };
  }
  if (kind === "str") {
    if (typeof expression !== "string") throw new HintError(`Root device hint "${key}" is not a string value. Hint expression: ${String(expression)}`);
    const { op, values } = splitExpression(expression, key);
    const operator = op === "" ? "s==" : op;
    if (operator === "<all-in>") {
      // Every word must be in the device value (see docs/disks.md: IPA compares the whole phrase).
      return { key, kind, op: operator, values: values.flatMap((v) => v.split(/\s+/)).filter((v) => v !== "").map(pyQuote) };
    }
    return { key, kind, op: operator, values: NUMERIC_OPS.has(operator) ? values : values.map(pyQuote) };
  }
  if (typeof expression !== "string" && typeof expression !== "number") {
    throw new HintError(`Root device hint "${key}" is not an integer value. Current value: ${String(expression)}`);
  }
  const { op, values } = splitExpression(String(expression), key);
  const operator = op === "" ? "==" : op;
  if (!NUMERIC_OPS.has(operator) && operator !== "<or>") {
    throw new HintError(`Root device hint "${key}" takes a numeric operator (=, ==, !=, <, <=, >, >=, <or>), not ${operator}`);
  }
  const numbers = values.map((v) => {
    if (!/^[+-]?\d+$/.test(v)) throw new HintError(`Root device hint "${key}" is not an integer value. Current value: ${String(expression)}`);
    const n = Number(v);
    if (n <= 0) throw new HintError(`Root device hint "${key}" should be a positive integer. Current value: ${String(expression)}`);
    return n;
  });
  return { key, kind: "int", op: operator, values: numbers };
}

/** Validates and normalises hints; [] for none. Throws HintError. */
export function parseHints(hints: Readonly<Record<string, unknown>> | null | undefined): ParsedHint[] {
  if (hints === null || hints === undefined) return [];
  return Object.entries(hints).map(([key, expression]) => parseOne(key, expression));
}

function compareNumbers(op: string, a: number, b: number): boolean {
  switch (op) {
    case "=":
    case ">=":
      return a >= b;
    case "==":
      return a === b;
    case "!=":
      return a !== b;
    case "<":
      return a < b;
    case "<=":
      return a <= b;
    case ">":
      return a > b;
    default:
      return false;
  }
}

function asNumber(text: string): number | undefined {
  return /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text) ? Number(text) : undefined;
}

function matchString(op: string, deviceValue: string, values: readonly string[]): boolean {
  const first = values[0] ?? "";
  switch (op) {
    case "s==":
      return deviceValue === first;
    case "s!=":
      return deviceValue !== first;
    case "s<":
      return deviceValue < first;
    case "s<=":
      return deviceValue <= first;
    case "s>":
      return deviceValue > first;
    case "s>=":
      return deviceValue >= first;
    case "<in>":
      return deviceValue.includes(first);
    case "<all-in>":
      return values.every((v) => deviceValue.includes(v));
    case "<or>":
      return values.includes(deviceValue);
    default: {
      // A numeric operator on a string hint compares numbers, when both are numbers.
      const a = asNumber(decodeURIComponent(deviceValue));
      const b = asNumber(first);
      return a !== undefined && b !== undefined && compareNumbers(op, a, b);
    }
  }
}

function deviceField(dev: HintDevice, key: string): DeviceValue {
  return (dev as unknown as Readonly<Record<string, DeviceValue>>)[key];
}

/** True when the device satisfies the one hint. */
export function matchHint(hint: ParsedHint, dev: HintDevice): boolean {
  const raw = deviceField(dev, hint.key);
  if (hint.kind === "bool") {
    const value = strictBool(raw);
    return value !== undefined && value === hint.value;
  }
  if (hint.kind === "int") {
    if (typeof raw !== "number") return false;
    const gib = raw / 2 ** 30;
    if (hint.op === "<or>") return hint.values.some((v) => gib === v);
    return compareNumbers(hint.op, gib, hint.values[0] ?? Number.NaN);
  }
  const candidates = Array.isArray(raw) ? (raw as readonly (string | null)[]) : [raw as string | number | boolean | null | undefined];
  return candidates.some((value) => {
    if (value === null || value === undefined) return false;
    const text = String(value).trim().toLowerCase();
    if (text === "") return false;
    return matchString(hint.op, pyQuote(text), hint.values);
  });
}

export function matchesAll(hints: readonly ParsedHint[], dev: HintDevice): boolean {
  return hints.every((h) => matchHint(h, dev));
}

/** Every device (in order) matching all the hints. Throws HintError for hints that do not validate. */
export function findDevicesByHints<D extends HintDevice>(devices: readonly D[], hints: Readonly<Record<string, unknown>>): D[] {
  const parsed = parseHints(hints);
  return devices.filter((d) => matchesAll(parsed, d));
}

/** The first device matching all the hints, or undefined. */
export function matchRootDeviceHints<D extends HintDevice>(devices: readonly D[], hints: Readonly<Record<string, unknown>>): D | undefined {
  return findDevicesByHints(devices, hints)[0];
}

/** Which operator kinds exist, for documentation and tests. */
export const OPERATOR_SETS = { numeric: [...NUMERIC_OPS], string: [...STRING_OPS] } as const;
