#!/usr/bin/env node
// hevlayer-node-worker: a hevlayer stager and GPU-style worker on generated stubs.
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { parseArgs } from "node:util";

import { CallError } from "./rpc.js";
import { stage } from "./stager.js";
import { Worker } from "./worker.js";

const USAGE = `usage:
  hevlayer-node-worker stage --pipeline ID [--gateway HOST:PORT] [--chunk-size 800]
                             [--batch 16] [--skip-unchanged] FILE...
  hevlayer-node-worker work  --pipeline ID --embedder HOST:PORT [--gateway HOST:PORT]
                             [--from-stage pending] [--claim-stage node-embedding]
                             [--worker-id ID] [--credits 16] [--lease-seconds 60]
                             [--max-documents N] [--idle-timeout SECONDS] [--batch-size N]

--gateway defaults to $HEVLAYER_GATEWAY, else 127.0.0.1:50051 (hevlayer up's gateway).
--embedder is the embedder's gRPC address (EmbeddingService is not served by the gateway).

Exit status: 0 done, 1 a call failed or a document was rejected, 2 bad usage.`;

class UsageError extends Error {}

const STAGE_NAME = /^[a-z][a-z0-9_-]{0,62}$/;
const ADDRESS = /^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d+$/;

function integer(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`--${name}: expected an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function seconds(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    throw new UsageError(`--${name}: expected a number of seconds >= 0, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function address(name: string, raw: string | undefined): string {
  if (!raw) {
    throw new UsageError(`--${name}: required (host:port)`);
  }
  if (!ADDRESS.test(raw)) {
    throw new UsageError(`--${name}: expected host:port, got ${JSON.stringify(raw)}`);
  }
  return raw;
}

function required(name: string, raw: string | undefined): string {
  if (!raw) {
    throw new UsageError(`--${name}: required`);
  }
  return raw;
}

function stageName(name: string, raw: string | undefined, fallback: string): string {
  const value = raw ?? fallback;
  if (!STAGE_NAME.test(value)) {
    throw new UsageError(`--${name}: ${JSON.stringify(value)} is not a stage name (a-z, 0-9, _ and -)`);
  }
  return value;
}

const defaultGateway = (): string => process.env.HEVLAYER_GATEWAY || "127.0.0.1:50051";

async function stageCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      gateway: { type: "string" },
      pipeline: { type: "string" },
      "chunk-size": { type: "string" },
      batch: { type: "string" },
      "skip-unchanged": { type: "boolean" },
    },
  });
  if (positionals.length === 0) {
    throw new UsageError("stage: name at least one FILE");
  }
  const summary = await stage({
    gateway: address("gateway", values.gateway ?? defaultGateway()),
    pipeline: required("pipeline", values.pipeline),
    files: positionals,
    chunkSize: integer("chunk-size", values["chunk-size"], 800, 1, 1_000_000),
    batch: integer("batch", values.batch, 16, 1, 1000),
    skipUnchanged: values["skip-unchanged"] ?? false,
  });
  console.log(`${summary.staged} staged, ${summary.unchanged} unchanged, ${summary.rejected} rejected`);
  return summary.rejected > 0 ? 1 : 0;
}

async function workCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      gateway: { type: "string" },
      embedder: { type: "string" },
      pipeline: { type: "string" },
      "from-stage": { type: "string" },
      "claim-stage": { type: "string" },
      "worker-id": { type: "string" },
      credits: { type: "string" },
      "lease-seconds": { type: "string" },
      "max-documents": { type: "string" },
      "idle-timeout": { type: "string" },
      "batch-size": { type: "string" },
    },
  });
  if (positionals.length > 0) {
    throw new UsageError(`work: unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const fromStage = stageName("from-stage", values["from-stage"], "pending");
  const claimStage = stageName("claim-stage", values["claim-stage"], "node-embedding");
  if (["pending", "indexed", "failed"].includes(claimStage) || claimStage === fromStage) {
    throw new UsageError(`--claim-stage: must be a worker stage other than --from-stage, not ${claimStage}`);
  }
  const suffix = randomBytes(3).toString("hex");
  const workerId = values["worker-id"] ?? `node-${hostname()}-${process.pid}-${suffix}`;
  if (!workerId || Buffer.byteLength(workerId) > 256) {
    throw new UsageError("--worker-id: 1 to 256 bytes");
  }
  const worker = new Worker({
    gateway: address("gateway", values.gateway ?? defaultGateway()),
    embedder: address("embedder", values.embedder),
    pipeline: required("pipeline", values.pipeline),
    fromStage,
    claimStage,
    workerId,
    credits: integer("credits", values.credits, 16, 1, 10_000),
    leaseSeconds: integer("lease-seconds", values["lease-seconds"], 60, 3, 86_400),
    maxDocuments: integer("max-documents", values["max-documents"], 0, 0, Number.MAX_SAFE_INTEGER),
    idleTimeoutMs: seconds("idle-timeout", values["idle-timeout"], 0) * 1000,
    batchSize: integer("batch-size", values["batch-size"], 0, 0, 1024),
  });
  const summary = await worker.run();
  return summary.failed > 0 ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  try {
    switch (command) {
      case "stage":
        return await stageCommand(args);
      case "work":
        return await workCommand(args);
      case "-h":
      case "--help":
      case "help":
        console.log(USAGE);
        return 0;
      default:
        throw new UsageError(command ? `unknown command ${JSON.stringify(command)}` : "name a command");
    }
  } catch (error) {
    if (error instanceof UsageError || (error instanceof TypeError && "code" in error)) {
      console.error(`error: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    if (error instanceof CallError) {
      console.error(`error: ${error.message}`);
      return 1;
    }
    console.error(`error: ${(error as Error).message ?? error}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
