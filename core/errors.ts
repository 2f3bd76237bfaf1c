/**
 * The one error type of ironbus. Every failure the agent reports carries a code from ERROR_CODES;
 * docs/errors.md lists them all and test/errors.test.ts keeps the two in step.
 */

export interface ErrorCodeInfo {
  /** HTTP-like status: the REST status for pre-execution failures, `command_error.code` otherwise. */
  readonly status: number;
  /** The exception class name IPA reports in `command_error.type`. */
  readonly ipaType: string;
  /** IPA's fixed message for this kind of failure (`command_error.message`, the prefix of `faultstring`). */
  readonly message: string;
}

export const ERROR_CODES = {
  INVALID_ENVELOPE: { status: 400, ipaType: "InvalidContentError", message: "Invalid envelope" },
  INVALID_REQUEST: { status: 400, ipaType: "InvalidContentError", message: "400 Bad Request" },
  MESSAGE_TOO_LARGE: { status: 413, ipaType: "RequestEntityTooLarge", message: "413 Request Entity Too Large" },
  UNSUPPORTED_CONTENT_TYPE: { status: 415, ipaType: "UnsupportedMediaType", message: "415 Unsupported Media Type" },
  INVALID_COMMAND_NAME: { status: 400, ipaType: "InvalidCommandError", message: "Invalid command" },
  UNKNOWN_EXTENSION: { status: 404, ipaType: "RequestedObjectNotFoundError", message: "Not found" },
  UNKNOWN_COMMAND: { status: 400, ipaType: "InvalidCommandError", message: "Invalid command" },
  INVALID_PARAMS: { status: 400, ipaType: "InvalidCommandParamsError", message: "Invalid command parameters" },
  BAD_ARGUMENTS: { status: 400, ipaType: "TypeError", message: "Invalid command arguments" },
  UNKNOWN_COMMAND_ID: { status: 404, ipaType: "RequestedObjectNotFoundError", message: "Not found" },
  DUPLICATE_COMMAND: { status: 409, ipaType: "DuplicateCommandError", message: "Command already executed" },
  AGENT_BUSY: { status: 409, ipaType: "AgentIsBusy", message: "Agent is busy" },
  UNAUTHORIZED: { status: 401, ipaType: "Unauthorized", message: "401 Unauthorized" },
  DESTRUCTIVE_NOT_ALLOWED: { status: 403, ipaType: "DestructiveCommandRefused", message: "Destructive commands are not allowed by the agent configuration" },
  DEVICE_NOT_ALLOWED: { status: 403, ipaType: "DeviceNotAllowed", message: "Device is outside the configured set" },
  COMMAND_TIMEOUT: { status: 504, ipaType: "CommandTimeout", message: "Command exceeded its deadline" },
  COMMAND_CANCELLED: { status: 409, ipaType: "CommandCancelled", message: "Command was cancelled" },
  COMMAND_EXPIRED: { status: 410, ipaType: "CommandExpired", message: "Command expired before it could run" },
  COMMAND_FAILED: { status: 500, ipaType: "CommandExecutionError", message: "Command execution failed" },
  TOOL_FAILED: { status: 500, ipaType: "ProcessExecutionError", message: "Unexpected error while running command" },
  HARDWARE_METHOD_NOT_FOUND: { status: 500, ipaType: "HardwareManagerMethodNotFound", message: "No HardwareManager found to handle method" },
  INCOMPATIBLE_HARDWARE_METHOD: { status: 500, ipaType: "IncompatibleHardwareMethodError", message: "Hardware manager cannot handle this method on this hardware" },
  VERSION_MISMATCH: { status: 409, ipaType: "VersionMismatch", message: "Hardware managers version mismatch, reload agent with correct version" },
  NOT_FOUND: { status: 404, ipaType: "NotFound", message: "404 Not Found" },
  METHOD_NOT_ALLOWED: { status: 405, ipaType: "MethodNotAllowed", message: "405 Method Not Allowed" },
  CONFIG_INVALID: { status: 500, ipaType: "InvalidConfiguration", message: "Invalid agent configuration" },
  PLUGIN_INVALID: { status: 500, ipaType: "InvalidHardwareManager", message: "Invalid hardware manager plugin" },
  SHUTTING_DOWN: { status: 503, ipaType: "ServiceUnavailable", message: "Agent is shutting down" },
  IRONIC_UNREACHABLE: { status: 503, ipaType: "ConnectionError", message: "Could not reach the Ironic API" },
  LOOKUP_FAILED: { status: 500, ipaType: "LookupNodeError", message: "Error getting configuration from Ironic" },
  HEARTBEAT_FAILED: { status: 500, ipaType: "HeartbeatError", message: "Error heartbeating to agent API" },
  ADVERTISE_ADDRESS_NOT_FOUND: { status: 500, ipaType: "LookupAgentIPError", message: "Error finding IP for Ironic Agent" },
  INSPECTION_FAILED: { status: 500, ipaType: "InspectionError", message: "Failure in inspection" },
  SIGNATURE_REQUIRED: { status: 401, ipaType: "SignatureRequired", message: "A signed envelope is required" },
  SIGNATURE_INVALID: { status: 401, ipaType: "SignatureInvalid", message: "Invalid signature" },
  INVALID_VALIDITY_WINDOW: { status: 400, ipaType: "InvalidValidityWindow", message: "Invalid validity window" },
  REPLAYED: { status: 409, ipaType: "ReplayedEnvelope", message: "Envelope already received" },
  FORBIDDEN: { status: 403, ipaType: "Forbidden", message: "The signing key may not do this" },
  RATE_LIMITED: { status: 429, ipaType: "TooManyRequests", message: "Too many commands" },
  BUS_UNAVAILABLE: { status: 503, ipaType: "ServiceUnavailable", message: "The broker or hub cannot be reached" },
  INTERNAL: { status: 500, ipaType: "CommandExecutionError", message: "Command execution failed" },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** IPA's serialised command error, exactly as Ironic reads it. */
export interface CommandErrorJson {
  type: string;
  code: number;
  message: string;
  details: string;
}

/** IPA's (WSME's) HTTP fault body. */
export interface FaultJson {
  faultcode: "Client" | "Server";
  faultstring: string;
}

export interface AgentErrorOptions extends ErrorOptions {
  /** Overrides `command_error.type` where IPA reports a different class for the same code. */
  readonly ipaType?: string;
  /** Overrides the fixed message of the code. */
  readonly message?: string;
  /** Overrides the status of the code. */
  readonly status?: number;
}

export class AgentError extends Error {
  override readonly name = "AgentError";
  readonly code: ErrorCode;
  /** The variable part: what went wrong with this input. Shown to the caller. */
  readonly details: string;
  readonly status: number;
  readonly ipaType: string;
  readonly summary: string;

  constructor(code: ErrorCode, details: string, options: AgentErrorOptions = {}) {
    const info: ErrorCodeInfo = ERROR_CODES[code];
    const summary = options.message ?? info.message;
    super(details ? `${summary}: ${details}` : summary, options.cause === undefined ? {} : { cause: options.cause });
    this.code = code;
    this.details = details;
    this.summary = summary;
    this.status = options.status ?? info.status;
    this.ipaType = options.ipaType ?? info.ipaType;
  }

  toCommandError(): CommandErrorJson {
    return { type: this.ipaType, code: this.status, message: this.summary, details: this.details };
  }

  toFault(): FaultJson {
    return { faultcode: this.status >= 500 ? "Server" : "Client", faultstring: this.message };
  }

  static is(value: unknown, code?: ErrorCode): value is AgentError {
    return value instanceof AgentError && (code === undefined || value.code === code);
  }

  /** Wraps anything thrown into an AgentError; non-AgentErrors become `fallback` with the original as cause. */
  static from(value: unknown, fallback: ErrorCode = "INTERNAL"): AgentError {
    if (value instanceof AgentError) return value;
    const details = value instanceof Error ? value.message : String(value);
    return new AgentError(fallback, details, { cause: value });
  }
}
