/**
 * IPA's image errors, as AgentErrors: the same `command_error.type` and message Ironic shows, and a
 * mark telling the download loop which failures are worth another attempt.
 */
import { AgentError } from "../../core/errors.js";

const retryable = new WeakSet<AgentError>();

function make(ipaType: string, message: string, details: string, opts: { status?: number; cause?: unknown } = {}): AgentError {
  return new AgentError("COMMAND_FAILED", details, {
    ipaType,
    message,
    ...(opts.status === undefined ? {} : { status: opts.status }),
    ...(opts.cause === undefined ? {} : { cause: opts.cause }),
  });
}

/**
 * A download that failed. `retry`: another attempt of the whole download may succeed (broken stream);
 * `final`: every URL was already retried (IPA's ImageDownloadError); `fatal`: a 4xx and the like, never
 * retried (IPA's ImageDownloadFatalError).
 */
export function downloadError(imageId: string, msg: string, kind: "retry" | "final" | "fatal", cause?: unknown): AgentError {
  const err = make(kind === "fatal" ? "ImageDownloadFatalError" : "ImageDownloadError", "Error downloading image", `Download of image ${imageId} failed: ${msg}`, { cause });
  if (kind === "retry") retryable.add(err);
  return err;
}

export function downloadTimeoutError(imageId: string, msg: string): AgentError {
  return make("ImageDownloadTimeoutError", "Image download timeout", `Download of image ${imageId} failed: ${msg}`, { status: 408 });
}

export function outOfSpaceError(imageId: string, msg: string, cause?: unknown): AgentError {
  return make("ImageDownloadOutofSpaceError", "Error downloading image", `Download of image ${imageId} failed: ${msg}`, { cause });
}

export function checksumError(imageId: string, location: string, expected: string, actual: string): AgentError {
  const err = make(
    "ImageChecksumError",
    "Error verifying image checksum",
    `Image failed to verify against checksum. location: ${location}; image ID: ${imageId}; image checksum: ${expected}; verification checksum: ${actual}`,
  );
  retryable.add(err);
  return err;
}

export function writeError(device: string, msg: string, cause?: unknown): AgentError {
  return make("ImageWriteError", "Error writing image to device", `Writing image to device ${device} failed: ${msg}`, { cause });
}

export function deploymentError(details: string, cause?: unknown): AgentError {
  return make("DeploymentError", "Deploy step failed", details, { cause });
}

export function invalidImage(details: string): AgentError {
  return make("InvalidImage", "The provided image is not valid for use", details);
}

export function deviceNotFound(details: string): AgentError {
  return make("DeviceNotFound", "Error finding the disk or partition device to deploy the image onto", details, { status: 404 });
}

export function invalidParams(details: string): AgentError {
  return new AgentError("INVALID_PARAMS", details);
}

export function isRetryable(err: unknown): boolean {
  return err instanceof AgentError && retryable.has(err);
}
