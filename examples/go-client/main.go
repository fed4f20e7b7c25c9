// Command go-client drives a hevlayer gateway over gRPC the way a producer or an
// operator would: it lists the pipelines, creates one if it is missing, stages
// documents (StagingService.StageDocuments), waits until an embedder worker has
// indexed them (PipelineService.WatchPipelineStatus, StagingService.GetDocument),
// then searches the pipeline by text (IndexService.Query) and prints the hits.
//
// It uses the Go stubs `buf generate` writes from protos/ (see README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	documentv1 "github.com/hevlayer/hevlayer/gen/go/hevlayer/api/document/v1"
	indexv1 "github.com/hevlayer/hevlayer/gen/go/hevlayer/api/index/v1"
	pipelinev1 "github.com/hevlayer/hevlayer/gen/go/hevlayer/api/pipeline/v1"
	stagingv1 "github.com/hevlayer/hevlayer/gen/go/hevlayer/api/staging/v1"
)

const (
	stageIndexed = "indexed"
	stageFailed  = "failed"
	// How often the documents are re-read while waiting, besides every status update.
	pollInterval = 2 * time.Second
)

type options struct {
	gateway    string
	pipeline   string
	docPrefix  string
	query      string
	topK       uint
	waitFor    time.Duration
	rpcTimeout time.Duration
	files      []string
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-client: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintf(os.Stderr, "go-client: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var opts options
	defaultGateway := os.Getenv("HEVLAYER_GATEWAY")
	if defaultGateway == "" {
		defaultGateway = "localhost:50051"
	}
	fs := flag.NewFlagSet("go-client", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go-client [flags] [FILE...]\n\n"+
			"Stages FILEs (one document per file, one chunk per paragraph; by default two\n"+
			"sample documents), waits until they are indexed, and queries the pipeline.\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&opts.gateway, "gateway", defaultGateway, "gateway gRPC address host:port (default: $HEVLAYER_GATEWAY or localhost:50051)")
	fs.StringVar(&opts.pipeline, "pipeline", "go-client-demo", "pipeline id; created when it does not exist")
	fs.StringVar(&opts.docPrefix, "doc-prefix", "go-client", "prefix of the sample documents' ids")
	fs.StringVar(&opts.query, "query", "a kitten napping on a carpet", "text to search for once the documents are indexed")
	fs.UintVar(&opts.topK, "top-k", 3, "number of hits to ask for (1 to 1000)")
	fs.DurationVar(&opts.waitFor, "wait", 3*time.Minute, "how long to wait for the documents to be indexed")
	fs.DurationVar(&opts.rpcTimeout, "rpc-timeout", 30*time.Second, "deadline of each unary call")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	opts.files = fs.Args()
	switch {
	case opts.gateway == "":
		return opts, errors.New("-gateway: empty address")
	case opts.pipeline == "":
		return opts, errors.New("-pipeline: empty pipeline id")
	case opts.query == "":
		return opts, errors.New("-query: empty text")
	case opts.topK < 1 || opts.topK > 1000:
		return opts, fmt.Errorf("-top-k: %d is not between 1 and 1000", opts.topK)
	case opts.waitFor <= 0:
		return opts, fmt.Errorf("-wait: %s is not positive", opts.waitFor)
	case opts.rpcTimeout <= 0:
		return opts, fmt.Errorf("-rpc-timeout: %s is not positive", opts.rpcTimeout)
	}
	return opts, nil
}

// rpcError describes a failed call with its gRPC status code and message.
func rpcError(method string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s failed: %s (code %d): %s", method, st.Code(), int(st.Code()), st.Message())
	}
	return fmt.Errorf("%s failed: %v", method, err)
}

type client struct {
	opts      options
	pipelines pipelinev1.PipelineServiceClient
	staging   stagingv1.StagingServiceClient
	index     indexv1.IndexServiceClient
}

func run(ctx context.Context, opts options) error {
	documents, err := loadDocuments(opts)
	if err != nil {
		return err
	}
	// grpc-go 1.33 (Debian 12) has no credentials/insecure: WithInsecure is plaintext.
	// The dial does not block: an unreachable gateway shows as UNAVAILABLE on the first call.
	conn, err := grpc.DialContext(ctx, opts.gateway, grpc.WithInsecure())
	if err != nil {
		return fmt.Errorf("-gateway %s: %v", opts.gateway, err)
	}
	defer conn.Close()
	c := &client{
		opts:      opts,
		pipelines: pipelinev1.NewPipelineServiceClient(conn),
		staging:   stagingv1.NewStagingServiceClient(conn),
		index:     indexv1.NewIndexServiceClient(conn),
	}
	fmt.Printf("gateway %s\n", opts.gateway)
	if err := c.ensurePipeline(ctx); err != nil {
		return err
	}
	ids, err := c.stage(ctx, documents)
	if err != nil {
		return err
	}
	if err := c.waitIndexed(ctx, ids); err != nil {
		return err
	}
	return c.search(ctx)
}

// ensurePipeline lists the pipelines (every page) and creates opts.pipeline when it is not there.
func (c *client) ensurePipeline(ctx context.Context) error {
	var ids []string
	found := false
	token := ""
	for {
		callCtx, cancel := context.WithTimeout(ctx, c.opts.rpcTimeout)
		resp, err := c.pipelines.ListPipelines(callCtx, &pipelinev1.ListPipelinesRequest{PageSize: 100, PageToken: token})
		cancel()
		if err != nil {
			return rpcError("PipelineService.ListPipelines", err)
		}
		for _, p := range resp.GetPipelines() {
			ids = append(ids, p.GetId())
			found = found || p.GetId() == c.opts.pipeline
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	fmt.Printf("pipelines: %d [%s]\n", len(ids), strings.Join(ids, " "))
	if found {
		fmt.Printf("pipeline %s: exists\n", c.opts.pipeline)
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, c.opts.rpcTimeout)
	defer cancel()
	resp, err := c.pipelines.CreatePipeline(callCtx, &pipelinev1.CreatePipelineRequest{
		Pipeline: &pipelinev1.Pipeline{Id: c.opts.pipeline},
	})
	if status.Code(err) == codes.AlreadyExists {
		// Created by someone else between the listing and now: use it.
		fmt.Printf("pipeline %s: exists\n", c.opts.pipeline)
		return nil
	}
	if err != nil {
		return rpcError("PipelineService.CreatePipeline", err)
	}
	p := resp.GetPipeline()
	fmt.Printf("pipeline %s: created (namespace %s, metric %s, sink %s)\n",
		p.GetId(), p.GetTargetNamespace(), p.GetDistanceMetric(), p.GetSink())
	return nil
}

// stage sends every document in one StageDocuments message and returns the ids staged.
func (c *client) stage(ctx context.Context, documents []*documentv1.Document) ([]string, error) {
	const method = "StagingService.StageDocuments"
	callCtx, cancel := context.WithTimeout(ctx, c.opts.rpcTimeout)
	defer cancel()
	stream, err := c.staging.StageDocuments(callCtx)
	if err != nil {
		return nil, rpcError(method, err)
	}
	err = stream.Send(&stagingv1.StageDocumentsRequest{PipelineId: c.opts.pipeline, Documents: documents})
	if err != nil && err != io.EOF {
		return nil, rpcError(method, err)
	}
	// io.EOF from Send means the server ended the stream: its status comes from Recv.
	if err := stream.CloseSend(); err != nil {
		return nil, rpcError(method, err)
	}
	var staged []string
	var rejected []string
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, rpcError(method, err)
		}
		for _, r := range resp.GetResults() {
			switch r.GetOutcome() {
			case stagingv1.StageOutcome_STAGE_OUTCOME_STAGED, stagingv1.StageOutcome_STAGE_OUTCOME_UNCHANGED:
				fmt.Printf("staged %s: %d chunks, fencing token %d (%s)\n", r.GetDocumentId(),
					r.GetChunkCount(), r.GetFencingToken(), r.GetOutcome())
				staged = append(staged, r.GetDocumentId())
			default:
				rejected = append(rejected, describeDocumentError(r.GetDocumentId(), r.GetOutcome().String(), r.GetError()))
			}
		}
	}
	if len(rejected) > 0 {
		return nil, fmt.Errorf("%s: %d of %d documents not staged:\n  %s", method, len(rejected),
			len(documents), strings.Join(rejected, "\n  "))
	}
	if len(staged) != len(documents) {
		return nil, fmt.Errorf("%s: %d results for %d documents", method, len(staged), len(documents))
	}
	return staged, nil
}

func describeDocumentError(id, outcome string, e *documentv1.DocumentError) string {
	text := fmt.Sprintf("%s: %s: %s (code %d): %s", id, outcome, codes.Code(e.GetCode()), e.GetCode(), e.GetMessage())
	for _, v := range e.GetFieldViolations() {
		text += fmt.Sprintf("; %s: %s", v.GetField(), v.GetDescription())
	}
	return text
}

// waitIndexed returns once every document is indexed. It re-reads the documents on every
// WatchPipelineStatus update and every pollInterval (so it also ends if the watch ends).
func (c *client) waitIndexed(ctx context.Context, ids []string) error {
	waitCtx, cancel := context.WithTimeout(ctx, c.opts.waitFor)
	defer cancel()
	updates := make(chan *pipelinev1.PipelineStatus)
	watchDone := make(chan error, 1)
	go c.watch(waitCtx, updates, watchDone)

	remaining := make(map[string]string, len(ids)) // id -> last seen stage
	for _, id := range ids {
		remaining[id] = "not read yet"
	}
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if err := c.checkDocuments(waitCtx, remaining); err != nil {
			return err
		}
		if len(remaining) == 0 {
			return nil
		}
		select {
		case st := <-updates:
			fmt.Printf("status: %s (pending_count %d)\n", formatCounts(st.GetCounts()), st.GetPendingCount())
		case err := <-watchDone:
			if waitCtx.Err() == nil {
				fmt.Printf("status watch ended (%v); polling every %s\n", rpcError("WatchPipelineStatus", err), pollInterval)
			}
			watchDone = nil
		case <-ticker.C:
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted while waiting: %s", formatStages(remaining))
			}
			return fmt.Errorf("documents not indexed within -wait %s: %s", c.opts.waitFor, formatStages(remaining))
		}
	}
}

func (c *client) watch(ctx context.Context, updates chan<- *pipelinev1.PipelineStatus, done chan<- error) {
	stream, err := c.pipelines.WatchPipelineStatus(ctx, &pipelinev1.WatchPipelineStatusRequest{
		PipelineId: c.opts.pipeline, MinIntervalMs: 250,
	})
	if err != nil {
		done <- err
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			done <- err
			return
		}
		select {
		case updates <- resp.GetStatus():
		case <-ctx.Done():
			done <- ctx.Err()
			return
		}
	}
}

// checkDocuments reads each remaining document, drops the indexed ones and fails on a failed one.
func (c *client) checkDocuments(ctx context.Context, remaining map[string]string) error {
	ids := make([]string, 0, len(remaining))
	for id := range remaining {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		callCtx, cancel := context.WithTimeout(ctx, c.opts.rpcTimeout)
		resp, err := c.staging.GetDocument(callCtx, &stagingv1.GetDocumentRequest{PipelineId: c.opts.pipeline, DocumentId: id})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil // the caller reports the deadline
			}
			return rpcError("StagingService.GetDocument "+id, err)
		}
		doc := resp.GetDocument()
		switch doc.GetStage() {
		case stageIndexed:
			fmt.Printf("indexed %s: fencing token %d, attempts %d\n", id, doc.GetFencingToken(), doc.GetAttempts())
			delete(remaining, id)
		case stageFailed:
			return fmt.Errorf("document %s failed after %d attempts: %s", id, doc.GetAttempts(), doc.GetLastError())
		default:
			remaining[id] = doc.GetStage()
		}
	}
	return nil
}

func (c *client) search(ctx context.Context) error {
	callCtx, cancel := context.WithTimeout(ctx, c.opts.rpcTimeout)
	defer cancel()
	resp, err := c.index.Query(callCtx, &indexv1.QueryRequest{
		PipelineId: c.opts.pipeline,
		Query:      &indexv1.QueryRequest_Text{Text: c.opts.query},
		TopK:       uint32(c.opts.topK),
	})
	if err != nil {
		return rpcError("IndexService.Query", err)
	}
	fmt.Printf("query %q: %d hits\n", c.opts.query, len(resp.GetHits()))
	for i, hit := range resp.GetHits() {
		text := hit.GetAttributes().GetFields()["text"].GetStringValue()
		fmt.Printf("hit %d: score=%.4f document=%s chunk=%s text=%q\n", i+1, hit.GetScore(),
			hit.GetDocumentId(), hit.GetChunkId(), text)
	}
	return nil
}

// loadDocuments returns the documents to stage: one per file (id = the file's base name,
// one chunk per blank-line separated paragraph), or the two sample documents.
func loadDocuments(opts options) ([]*documentv1.Document, error) {
	if len(opts.files) == 0 {
		return []*documentv1.Document{
			newDocument(opts.docPrefix+"-cats", "sample", []string{
				"Cats are small domesticated carnivores that purr when they are content.",
				"A kitten sleeps curled up on the warm rug by the fireplace.",
			}),
			newDocument(opts.docPrefix+"-rockets", "sample", []string{
				"Rockets burn liquid hydrogen and liquid oxygen to lift satellites into orbit.",
				"The launch was delayed because of high winds over the launch pad.",
			}),
		}, nil
	}
	documents := make([]*documentv1.Document, 0, len(opts.files))
	for _, path := range opts.files {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var paragraphs []string
		for _, p := range strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n\n") {
			if p = strings.TrimSpace(p); p != "" {
				paragraphs = append(paragraphs, p)
			}
		}
		documents = append(documents, newDocument(filepath.Base(path), path, paragraphs))
	}
	return documents, nil
}

func newDocument(id, source string, paragraphs []string) *documentv1.Document {
	doc := &documentv1.Document{Id: id}
	for i, text := range paragraphs {
		// Metadata is copied into the vectors' attributes and comes back with the hits.
		metadata, err := structpb.NewStruct(map[string]interface{}{"source": source, "paragraph": i})
		if err != nil {
			panic(err) // a string and an int always convert
		}
		doc.Chunks = append(doc.Chunks, &documentv1.Chunk{
			Id:       fmt.Sprintf("%s-%d", id, i),
			Text:     text,
			Metadata: metadata,
		})
	}
	return doc
}

func formatCounts(counts map[string]int64) string {
	if len(counts) == 0 {
		return "no documents"
	}
	stages := make([]string, 0, len(counts))
	for stage := range counts {
		stages = append(stages, stage)
	}
	sort.Strings(stages)
	parts := make([]string, len(stages))
	for i, stage := range stages {
		parts[i] = fmt.Sprintf("%s=%d", stage, counts[stage])
	}
	return strings.Join(parts, " ")
}

func formatStages(remaining map[string]string) string {
	ids := make([]string, 0, len(remaining))
	for id := range remaining {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s (%s)", id, remaining[id])
	}
	return strings.Join(parts, ", ")
}
