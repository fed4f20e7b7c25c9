// Channels to hevlayer servers and how their errors are shown.
import { ConnectError } from "@connectrpc/connect";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

/** gRPC status names by code (google.rpc.Code); Connect's Code enum uses the same numbers. */
const STATUS_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** The gRPC name of a status code, e.g. 3 → INVALID_ARGUMENT. */
export function statusName(code: number): string {
  return STATUS_NAMES[code] ?? `CODE_${code}`;
}

/** "INVALID_ARGUMENT (3): pipeline_id: ..." for a status code and message. */
export function formatStatus(code: number, message: string): string {
  return `${statusName(code)} (${code}): ${message}`;
}

/** A plaintext gRPC (HTTP/2) transport to host:port. */
export function grpcTransport(address: string): Transport {
  return createGrpcTransport({ baseUrl: `http://${address}` });
}

/** A failed call: the RPC's name and the gRPC status it ended with. */
export class CallError extends Error {
  constructor(
    readonly rpc: string,
    readonly code: number,
    readonly statusMessage: string,
  ) {
    super(`${rpc} failed: ${formatStatus(code, statusMessage)}`);
  }
}

/** Run a call; a failure becomes a CallError naming the RPC and its gRPC status. */
export async function call<T>(rpc: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof CallError) {
      throw error;
    }
    const failed = ConnectError.from(error);
    throw new CallError(rpc, failed.code, failed.rawMessage);
  }
}
