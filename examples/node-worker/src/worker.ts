// The GPU-style worker: StreamLeases → ReadChunks → Embed → WriteVectors, heartbeating
// the leases it holds, one credit back per finished document.
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import type { JsonObject } from "@bufbuild/protobuf";

import type { Chunk } from "./gen/hevlayer/api/document/v1/document_pb.js";
import { EmbeddingService, InputType } from "./gen/hevlayer/api/embedding/v1/embedding_pb.js";
import {
  IndexService,
  type WriteVectorsRequest,
  WriteVectorsRequestSchema,
  WriteOutcome,
} from "./gen/hevlayer/api/index/v1/index_pb.js";
import {
  LeaseLayout,
  LeaseService,
  type StreamLeasesRequest,
  StreamLeasesRequestSchema,
  type StreamLeasesResponse,
  TransitionOutcome,
} from "./gen/hevlayer/api/lease/v1/lease_pb.js";
import { StagingService } from "./gen/hevlayer/api/staging/v1/staging_pb.js";
import { AsyncQueue } from "./queue.js";
import { CallError, call, formatStatus, grpcTransport } from "./rpc.js";

/** Code of gRPC NOT_FOUND (a document deleted while it was held). */
const NOT_FOUND = 5;
/** The claimer's limit on documents per heartbeat or transition. */
const MAX_BATCH = 10_000;
/** Vectors per WriteVectors message (a document's vectors may span several). */
const VECTORS_PER_MESSAGE = 256;
/** Attribute keys the gateway sets itself. */
const RESERVED_ATTRIBUTES = ["document_id", "chunk_id"];
/** How long a stopping worker waits for the server to end the claim stream. */
const STREAM_END_MS = 10_000;

export interface WorkOptions {
  gateway: string;
  embedder: string;
  pipeline: string;
  fromStage: string;
  claimStage: string;
  workerId: string;
  /** Most documents held at once: the credits of the claim stream. */
  credits: number;
  /** Lease length asked for; leases are heartbeated every third of it. */
  leaseSeconds: number;
  /** Stop once this many documents are finished (indexed or failed); 0: no limit. */
  maxDocuments: number;
  /** Stop once nothing was leased for this long while nothing is held; 0: never. */
  idleTimeoutMs: number;
  /** Texts per Embed request; 0: the model's max_batch_size. */
  batchSize: number;
}

export interface WorkSummary {
  indexed: number;
  failed: number;
  lost: number;
  released: number;
}

/** A document this worker holds a lease on. */
interface Held {
  documentId: string;
  fencingToken: bigint;
  /** Set when the lease was found lost (heartbeat or ReadChunks): nothing more is done with it. */
  lost: boolean;
}

/** The leases of a StreamLeases answer, in either layout. */
function leasesOf(response: StreamLeasesResponse): { documentId: string; fencingToken: bigint }[] {
  const columns = response.leaseColumns;
  if (columns) {
    return columns.documentIds.map((documentId, i) => ({
      documentId,
      fencingToken: columns.fencingTokens[i],
    }));
  }
  return response.leases.map((lease) => ({ documentId: lease.documentId, fencingToken: lease.fencingToken }));
}

function ref(document: Held): { documentId: string; fencingToken: bigint } {
  return { documentId: document.documentId, fencingToken: document.fencingToken };
}

/** The vector's attributes: the chunk's metadata (but reserved keys) and its text. */
function attributesOf(chunk: Chunk): JsonObject {
  const attributes: JsonObject = { ...(chunk.metadata ?? {}) };
  for (const key of RESERVED_ATTRIBUTES) {
    delete attributes[key];
  }
  attributes.text = chunk.text;
  return attributes;
}

export class Worker {
  private readonly leases;
  private readonly staging;
  private readonly index;
  private readonly embedding;
  private readonly held = new Map<string, Held>();
  private readonly ready = new AsyncQueue<Held>();
  private readonly requests = new AsyncQueue<StreamLeasesRequest>();
  private readonly summary: WorkSummary = { indexed: 0, failed: 0, lost: 0, released: 0 };
  /** Credits granted on the stream and not yet used by a lease. */
  private outstanding = 0;
  private heartbeating = false;

  constructor(private readonly options: WorkOptions) {
    const gateway = grpcTransport(options.gateway);
    this.leases = createClient(LeaseService, gateway);
    this.staging = createClient(StagingService, gateway);
    this.index = createClient(IndexService, gateway);
    this.embedding = createClient(EmbeddingService, grpcTransport(options.embedder));
  }

  private get finished(): number {
    return this.summary.indexed + this.summary.failed;
  }

  /** Credits the stream may be given now: up to `credits` held, and no more than maxDocuments in all. */
  private grantable(): number {
    let room = this.options.credits - this.held.size - this.outstanding;
    if (this.options.maxDocuments > 0) {
      room = Math.min(room, this.options.maxDocuments - this.finished - this.held.size - this.outstanding);
    }
    return Math.max(0, room);
  }

  async run(): Promise<WorkSummary> {
    const o = this.options;
    const model = await call("DescribeModel", () => this.embedding.describeModel({}));
    const batchSize = Math.max(1, Math.min(o.batchSize || model.maxBatchSize || 64, 1024));
    console.log(
      `worker ${o.workerId}: pipeline ${o.pipeline}, ${o.fromStage} → ${o.claimStage}, ` +
        `model ${model.model} (${model.dimension} dimensions), ${batchSize} texts per Embed request`,
    );

    const initial = this.grantable();
    this.outstanding = initial;
    this.requests.push(
      create(StreamLeasesRequestSchema, {
        kind: {
          case: "open",
          value: {
            pipelineId: o.pipeline,
            stage: o.fromStage,
            claimStage: o.claimStage,
            workerId: o.workerId,
            leaseSeconds: o.leaseSeconds,
            initialCredits: initial,
            layout: LeaseLayout.COLUMNS,
          },
        },
      }),
    );
    const abort = new AbortController();
    const receiving = this.receive(abort.signal);
    const heartbeat = setInterval(() => void this.heartbeat(), (o.leaseSeconds * 1000) / 3);

    let failure: unknown;
    let reason = "the stream ended";
    try {
      while (o.maxDocuments === 0 || this.finished < o.maxDocuments) {
        const next = await this.ready.next(o.idleTimeoutMs > 0 ? o.idleTimeoutMs : undefined);
        if (next === null) {
          reason = `nothing to do for ${o.idleTimeoutMs / 1000} s`;
          break;
        }
        if (next.done) {
          break;
        }
        await this.process([next.value, ...this.ready.drain()], batchSize);
        const grant = this.grantable();
        if (grant > 0 && !this.requests.isClosed) {
          this.outstanding += grant;
          this.requests.push(
            create(StreamLeasesRequestSchema, { kind: { case: "credit", value: { documents: grant } } }),
          );
        }
      }
      if (o.maxDocuments > 0 && this.finished >= o.maxDocuments) {
        reason = `${this.finished} documents finished`;
      }
    } catch (error) {
      failure = error;
      reason = "a call failed";
    } finally {
      clearInterval(heartbeat);
      // Half-close: the server ends the stream; leases it grants meanwhile are released below.
      this.requests.close();
      let timer: NodeJS.Timeout | undefined;
      const ended = await Promise.race([
        receiving.then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), STREAM_END_MS);
        }),
      ]);
      clearTimeout(timer);
      if (!ended) {
        abort.abort();
      }
      const streamFailure = await receiving;
      if (failure === undefined && streamFailure !== undefined) {
        failure = streamFailure;
        reason = "the claim stream failed";
      }
      await this.releaseHeld(`worker ${o.workerId} stopped before finishing the document`);
    }
    const s = this.summary;
    console.log(
      `worker ${o.workerId} stopped (${reason}): ${s.indexed} indexed, ${s.failed} failed, ` +
        `${s.lost} lost, ${s.released} released`,
    );
    if (failure !== undefined) {
      throw failure;
    }
    return s;
  }

  /** Reads the claim stream into `ready` until it ends; resolves to its failure, if any. */
  private async receive(signal: AbortSignal): Promise<unknown> {
    try {
      await call("StreamLeases", async () => {
        for await (const response of this.leases.streamLeases(this.requests, { signal })) {
          for (const lease of leasesOf(response)) {
            this.outstanding = Math.max(0, this.outstanding - 1);
            const document: Held = { ...lease, lost: false };
            this.held.set(lease.documentId, document);
            if (!this.ready.isClosed) {
              this.ready.push(document);
            }
          }
        }
      });
      return undefined;
    } catch (error) {
      return signal.aborted ? undefined : error;
    } finally {
      this.ready.close();
    }
  }

  /** Read, embed and write a batch of held documents. */
  private async process(batch: Held[], batchSize: number): Promise<void> {
    const o = this.options;
    const live = batch.filter((d) => !d.lost);
    try {
      const chunks = await this.readChunks(live);
      const readable = live.filter((d) => !d.lost);
      const texts = readable.flatMap((d) => chunks.get(d.documentId)!.map((c) => c.text));
      const vectors = await this.embed(texts, batchSize);
      const messages: WriteVectorsRequest[] = [];
      let next = 0;
      for (const document of readable) {
        const documentChunks = chunks.get(document.documentId)!;
        const first = next;
        next += documentChunks.length;
        if (document.lost) {
          continue; // lost while it was embedded (a heartbeat found the lease gone)
        }
        const documentVectors = documentChunks.map((chunk, i) => ({
          id: chunk.id,
          values: vectors[first + i],
          attributes: attributesOf(chunk),
        }));
        let start = 0;
        do {
          const end = Math.min(start + VECTORS_PER_MESSAGE, documentVectors.length);
          messages.push(
            create(WriteVectorsRequestSchema, {
              pipelineId: o.pipeline,
              workerId: o.workerId,
              fromStage: o.claimStage,
              lease: ref(document),
              vectors: documentVectors.slice(start, end),
              endOfDocument: end === documentVectors.length,
            }),
          );
          start = end;
        } while (start < documentVectors.length);
      }
      if (messages.length > 0) {
        await this.writeVectors(messages);
      }
    } catch (error) {
      if (error instanceof CallError) {
        await this.release(live.filter((d) => this.held.has(d.documentId)), error.message);
      }
      throw error;
    }
  }

  /** ReadChunks: each held document's chunks; a document that cannot be read is lost. */
  private async readChunks(documents: Held[]): Promise<Map<string, Chunk[]>> {
    const o = this.options;
    const chunks = new Map<string, Chunk[]>(documents.map((d) => [d.documentId, []]));
    await call("ReadChunks", async () => {
      const responses = this.staging.readChunks({
        pipelineId: o.pipeline,
        workerId: o.workerId,
        stage: o.claimStage,
        leases: documents.map(ref),
      });
      for await (const response of responses) {
        const document = this.held.get(response.documentId);
        if (response.error) {
          if (document) {
            this.lose(document, formatStatus(response.error.code, response.error.message));
          }
          continue;
        }
        chunks.get(response.documentId)?.push(...response.chunks);
      }
    });
    return chunks;
  }

  /** Embed: one bidirectional stream, one request per `batchSize` texts, answers in order. */
  private async embed(texts: string[], batchSize: number): Promise<number[][]> {
    if (texts.length === 0) {
      return [];
    }
    const requests: { texts: string[]; inputType: InputType }[] = [];
    for (let start = 0; start < texts.length; start += batchSize) {
      requests.push({ texts: texts.slice(start, start + batchSize), inputType: InputType.DOCUMENT });
    }
    const vectors: number[][] = [];
    await call("Embed", async () => {
      async function* stream() {
        yield* requests;
      }
      for await (const response of this.embedding.embed(stream())) {
        vectors.push(...response.embeddings.map((e) => e.values));
      }
    });
    if (vectors.length !== texts.length) {
      throw new CallError("Embed", 13, `expected ${texts.length} embeddings, got ${vectors.length}`);
    }
    return vectors;
  }

  /** WriteVectors, then per document: indexed, lost (stale lease, deleted) or failed (rejected). */
  private async writeVectors(messages: WriteVectorsRequest[]): Promise<void> {
    const response = await call("WriteVectors", () =>
      this.index.writeVectors(
        (async function* () {
          yield* messages;
        })(),
      ),
    );
    const rejected: Held[] = [];
    const reasons: string[] = [];
    for (const result of response.results) {
      const document = this.held.get(result.documentId);
      if (!document) {
        continue;
      }
      const why = result.error ? formatStatus(result.error.code, result.error.message) : "";
      if (result.outcome === WriteOutcome.INDEXED) {
        this.held.delete(document.documentId);
        this.summary.indexed++;
        console.log(`indexed ${document.documentId}: ${result.vectorsWritten} vectors`);
      } else if (result.outcome === WriteOutcome.STALE_LEASE || result.error?.code === NOT_FOUND) {
        this.lose(document, why || "stale lease");
      } else {
        rejected.push(document);
        reasons.push(why || `write outcome ${result.outcome}`);
      }
    }
    for (const [i, document] of rejected.entries()) {
      await this.transition([document], "failed", reasons[i]);
      this.summary.failed++;
      console.log(`failed ${document.documentId}: ${reasons[i]}`);
    }
  }

  private lose(document: Held, why: string): void {
    document.lost = true;
    this.held.delete(document.documentId);
    this.summary.lost++;
    console.log(`lost ${document.documentId}: ${why}`);
  }

  /** HeartbeatLeases on every held document (columns); a lease not extended is lost. */
  private async heartbeat(): Promise<void> {
    const documents = [...this.held.values()];
    if (this.heartbeating || documents.length === 0) {
      return;
    }
    this.heartbeating = true;
    const o = this.options;
    try {
      for (let start = 0; start < documents.length; start += MAX_BATCH) {
        const batch = documents.slice(start, start + MAX_BATCH);
        const response = await call("HeartbeatLeases", () =>
          this.leases.heartbeatLeases({
            pipelineId: o.pipeline,
            stage: o.claimStage,
            workerId: o.workerId,
            leaseSeconds: o.leaseSeconds,
            leaseColumns: {
              documentIds: batch.map((d) => d.documentId),
              fencingTokens: batch.map((d) => d.fencingToken),
            },
          }),
        );
        const extended = response.resultColumns?.extended ?? [];
        batch.forEach((document, i) => {
          if (extended[i] === false && this.held.get(document.documentId) === document) {
            this.lose(document, "lease lost (heartbeat not extended)");
          }
        });
      }
    } catch (error) {
      console.error(`heartbeat: ${(error as Error).message}; retrying at the next beat`);
    } finally {
      this.heartbeating = false;
    }
  }

  /** TransitionDocuments out of the claim stage (columns); true per document that moved. */
  private async transition(documents: Held[], toStage: string, reason: string): Promise<boolean[]> {
    const o = this.options;
    const moved: boolean[] = [];
    for (let start = 0; start < documents.length; start += MAX_BATCH) {
      const batch = documents.slice(start, start + MAX_BATCH);
      const response = await call("TransitionDocuments", () =>
        this.leases.transitionDocuments({
          pipelineId: o.pipeline,
          fromStage: o.claimStage,
          workerId: o.workerId,
          toStage,
          reason: reason.slice(0, 4000),
          documentColumns: {
            documentIds: batch.map((d) => d.documentId),
            fencingTokens: batch.map((d) => d.fencingToken),
          },
        }),
      );
      for (const [i, document] of batch.entries()) {
        this.held.delete(document.documentId);
        moved.push(response.resultColumns?.outcomes[i] === TransitionOutcome.MOVED);
      }
    }
    return moved;
  }

  /** Hand documents back to the stage they were claimed from. */
  private async release(documents: Held[], reason: string): Promise<void> {
    if (documents.length === 0) {
      return;
    }
    const moved = await this.transition(documents, this.options.fromStage, reason);
    this.summary.released += moved.filter(Boolean).length;
    console.log(`released ${moved.filter(Boolean).length} documents to ${this.options.fromStage}: ${reason}`);
  }

  private async releaseHeld(reason: string): Promise<void> {
    try {
      await this.release([...this.held.values()], reason);
    } catch (error) {
      console.error(`releasing the held documents: ${(error as Error).message} (their leases will expire)`);
    }
  }
}
