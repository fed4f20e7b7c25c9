// The stager: files in, one document per file, chunks of ~800 characters, through
// StagingService.StageDocuments (a bidirectional stream: one answer per request message).
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as path from "node:path";

import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";

import { type Document, DocumentSchema } from "./gen/hevlayer/api/document/v1/document_pb.js";
import {
  type StageDocumentsRequest,
  StageDocumentsRequestSchema,
  StageOutcome,
  StagingService,
} from "./gen/hevlayer/api/staging/v1/staging_pb.js";
import { splitText } from "./chunking.js";
import { AsyncQueue } from "./queue.js";
import { call, formatStatus, grpcTransport } from "./rpc.js";

export interface StageOptions {
  gateway: string;
  pipeline: string;
  files: string[];
  chunkSize: number;
  /** Documents per StageDocuments message. */
  batch: number;
  skipUnchanged: boolean;
}

/** What happened to the files: counts by outcome. */
export interface StageSummary {
  staged: number;
  unchanged: number;
  rejected: number;
}

/** The document id of a file: its path as given, normalized, with / separators. */
export function documentId(file: string): string {
  return path.normalize(file).split(path.sep).join("/");
}

/** One document per file: chunks "c0", "c1", ... with the file and offset as metadata,
 * and the SHA-256 of the file's bytes as the content hash. */
export async function readDocument(file: string, chunkSize: number): Promise<Document> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new Error(`${file}: cannot read the file: ${(error as Error).message}`);
  }
  const id = documentId(file);
  return create(DocumentSchema, {
    id,
    contentHash: createHash("sha256").update(bytes).digest("hex"),
    chunks: splitText(bytes.toString("utf8"), chunkSize).map((chunk, index) => ({
      id: `c${index}`,
      text: chunk.text,
      metadata: { file: id, offset: chunk.offset },
    })),
  });
}

/** Stages the files (all read first, so an unreadable file stages nothing) and prints
 * one line per document. */
export async function stage(options: StageOptions): Promise<StageSummary> {
  const documents: Document[] = [];
  for (const file of options.files) {
    documents.push(await readDocument(file, options.chunkSize));
  }
  const client = createClient(StagingService, grpcTransport(options.gateway));
  const requests = new AsyncQueue<StageDocumentsRequest>();
  const batches: Document[][] = [];
  for (let start = 0; start < documents.length; start += options.batch) {
    batches.push(documents.slice(start, start + options.batch));
  }
  for (const batch of batches) {
    requests.push(
      create(StageDocumentsRequestSchema, {
        pipelineId: options.pipeline,
        documents: batch,
        skipUnchanged: options.skipUnchanged,
      }),
    );
  }
  requests.close();

  const summary: StageSummary = { staged: 0, unchanged: 0, rejected: 0 };
  await call("StageDocuments", async () => {
    for await (const response of client.stageDocuments(requests)) {
      for (const result of response.results) {
        switch (result.outcome) {
          case StageOutcome.STAGED:
            summary.staged++;
            console.log(
              `staged ${result.documentId}: ${result.chunkCount} chunks, ` +
                `fencing token ${result.fencingToken}`,
            );
            break;
          case StageOutcome.UNCHANGED:
            summary.unchanged++;
            console.log(`unchanged ${result.documentId}`);
            break;
          default: {
            summary.rejected++;
            const error = result.error;
            const reason = error ? formatStatus(error.code, error.message) : `outcome ${result.outcome}`;
            console.log(`rejected ${result.documentId}: ${reason}`);
            for (const violation of error?.fieldViolations ?? []) {
              if (!error?.message.includes(violation.field)) {
                console.log(`  ${violation.field}: ${violation.description}`);
              }
            }
          }
        }
      }
    }
  });
  return summary;
}
