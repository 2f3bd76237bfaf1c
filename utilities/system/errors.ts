/**
 * IPA's errors for the system area, as AgentErrors carrying IPA's `command_error.type`, message and
 * status (the same way the disk and image areas report theirs).
 */
import { AgentError } from "../../core/errors.js";

function ipa(ipaType: string, message: string, details: string, status?: number, cause?: unknown): AgentError {
  return new AgentError("COMMAND_FAILED", details, {
    ipaType,
    message,
    ...(status === undefined ? {} : { status }),
    ...(cause === undefined ? {} : { cause }),
  });
}

/** IPA's DeviceNotFound (404). */
export function deviceNotFound(details: string): AgentError {
  return ipa("DeviceNotFound", "Error finding the disk or partition device to deploy the image onto", details, 404);
}

/** IPA's InvalidImage. */
export function invalidImage(details: string): AgentError {
  return ipa("InvalidImage", "The provided image is not valid for use", details);
}

/** IPA's SoftwareRAIDError. */
export function softwareRaidError(details: string, cause?: unknown): AgentError {
  return ipa("SoftwareRAIDError", "Software RAID caused unknown error", details, undefined, cause);
}

/** IPA's SystemRebootError. */
export function systemRebootError(details: string, cause?: unknown): AgentError {
  return ipa("SystemRebootError", "Error rebooting system", details, undefined, cause);
}

/** IPA's CleaningError. */
export function cleaningError(details: string): AgentError {
  return ipa("CleaningError", "Clean step failed", details);
}
