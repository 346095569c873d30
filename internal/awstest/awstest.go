// Package awstest runs the embedded AWS emulator (kumo, in-process) behind a front server that
// bansshee's tests, demo and benchmarks talk to with the real aws-sdk-go-v2 clients. The front
// server serves the EC2 calls itself (see ec2.go for why) and can be stopped and started again on
// the same address, to simulate an outage. It is linked only into tests, the demo and the bench.
package awstest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	"github.com/sivchari/kumo"
)

var envSeq atomic.Int64

// Unique returns base with a suffix unique in this process. kumo's storage is process-wide (all
// emulators of one test binary share it), so tables and other named resources of one test must
// not collide with another's.
func Unique(base string) string {
	return fmt.Sprintf("%s-%d-%d", base, os.Getpid()%100000, envSeq.Add(1))
}

// Region is the region every client of the harness uses.
const Region = "us-east-1"

// Env is a running emulator.
type Env struct {
	kumo  *kumo.Server
	proxy *httputil.ReverseProxy
	// kumoHandler serves kumo in-process (nil: through proxy).
	kumoHandler http.Handler
	EC2         *ec2Server
	WAF         *wafServer // waf.go: the WAFv2 IP-set calls
	handler     http.Handler

	mu        sync.Mutex
	listeners map[string]*frontListener // by address
	requests  map[string]int            // by service
	regions   map[string]map[string]int // by front address (Host), by signing region
	held      map[string]chan struct{}  // X-Amz-Target -> closed on release
	throttle  map[string]int            // X-Amz-Target -> requests still to throttle
	failAfter map[string]int            // "ec2:DescribeInstances" -> requests still to pass before failing
	principal map[string]string         // access key id -> aws:userid (sts:GetCallerIdentity)
	ops       map[string]int            // by operation: "sqs:SendMessage", "ec2:DescribeInstances"
	latency   time.Duration             // added to every request, as a region's round trip is
	ddb       http.Handler              // DynamoDB elsewhere (dynalite); nil: kumo
}

type frontListener struct {
	addr string
	srv  *http.Server
	down bool
	bind func(addr string) (net.Listener, error)
}

// Start starts the emulator and a front server on 127.0.0.1 (a free port).
func Start() (*Env, error) {
	k := kumo.NewServer()
	target, err := url.Parse(k.URL)
	if err != nil {
		k.Close()
		return nil, err
	}
	e := &Env{kumo: k, proxy: httputil.NewSingleHostReverseProxy(target), EC2: newEC2(), WAF: newWAF(),
		listeners: map[string]*frontListener{}, requests: map[string]int{}, regions: map[string]map[string]int{}, held: map[string]chan struct{}{}, throttle: map[string]int{}, failAfter: map[string]int{}, principal: map[string]string{}, ops: map[string]int{}}
	e.proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second}
	// A client that gives up (a cancelled long poll) is normal here: answer 502 without a log line.
	e.proxy.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	e.kumoHandler = kumoHandler(k)
	e.handler = http.HandlerFunc(e.serve)
	if _, err := e.Listen("127.0.0.1:0", TCP); err != nil {
		k.Close()
		return nil, err
	}
	return e, nil
}

var scopeRe = regexp.MustCompile(`Credential=([^/]+)/[0-9]+/([^/]+)/([^/]+)/aws4_request`)

// SetPrincipal makes sts:GetCallerIdentity answer userID (an instance-profile session is
// "<role id>:<instance id>") for requests signed with accessKeyID; kumo answers one fixed identity.
func (e *Env) SetPrincipal(accessKeyID, userID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.principal[accessKeyID] = userID
}

func (e *Env) serve(w http.ResponseWriter, r *http.Request) {
	service, region, key := "unknown", "unknown", ""
	if m := scopeRe.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		key, region, service = m[1], m[2], m[3]
	}
	op, body := operation(service, r)
	e.mu.Lock()
	userID := e.principal[key]
	latency := e.latency
	ddb := e.ddb
	e.ops[service+":"+op]++
	e.requests[service]++
	if e.regions[r.Host] == nil {
		e.regions[r.Host] = map[string]int{}
	}
	e.regions[r.Host][region]++
	target := r.Header.Get("X-Amz-Target")
	hold := e.held[target]
	throttled := e.throttle[target] > 0
	if throttled {
		e.throttle[target]--
	}
	left, failing := e.failAfter[service+":"+op]
	if failing && left > 0 {
		e.failAfter[service+":"+op]--
	}
	e.mu.Unlock()
	if failing && left == 0 {
		if service != "ec2" {
			w.Header().Set("Content-Type", "application/x-amz-json-1.0")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"__type":"ServiceUnavailable","message":"The service is unavailable (bansshee test harness)."}`)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>Unavailable</Code><Message>The service is unavailable (bansshee test harness).</Message></Error></Errors><RequestID>bansshee</RequestID></Response>`)
		return
	}
	if throttled {
		// As AWS answers an over-rate JSON-protocol call; the SDK retries it with backoff.
		w.Header().Set("Content-Type", "application/x-amz-json-1.0")
		w.Header().Set("X-Amzn-Query-Error", "RequestThrottled;Sender")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Rate exceeded (bansshee test harness)"}`)
		return
	}
	if latency > 0 {
		t := time.NewTimer(latency) // the round trip to a region, not a synchronisation
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	// The request's JSON is at least as long as the body and attributes it carries (escaping
	// only adds), so only a long request needs reading for its size.
	if service == "sqs" && op == "SendMessage" && len(body) > MaxMessageSize {
		if size := sqsMessageSize(body); size > MaxMessageSize {
			// As SQS refuses a message whose body and attributes pass the queue's maximum.
			w.Header().Set("Content-Type", "application/x-amz-json-1.0")
			w.Header().Set("X-Amzn-Query-Error", "InvalidParameterValue;Sender")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"One or more parameters are invalid. Reason: Message must be shorter than %d bytes (body and attributes: %d)."}`, MaxMessageSize, size)
			return
		}
	}
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
		// The held call never reaches the emulator: as if the network lost it.
		http.Error(w, "held by the test harness", http.StatusServiceUnavailable)
		return
	}
	if service == "ec2" {
		e.EC2.ServeHTTP(w, r)
		return
	}
	if service == "wafv2" {
		e.WAF.ServeHTTP(w, r)
		return
	}
	if service == "dynamodb" && ddb != nil {
		ddb.ServeHTTP(w, r)
		return
	}
	if service == "sts" && userID != "" {
		if op == "GetCallerIdentity" {
			w.Header().Set("Content-Type", "text/xml")
			fmt.Fprintf(w, `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>`+
				`<Arn>arn:aws:sts::000000000000:assumed-role/bansshee-agent/%s</Arn><UserId>%s</UserId><Account>000000000000</Account>`+
				`</GetCallerIdentityResult><ResponseMetadata><RequestId>bansshee</RequestId></ResponseMetadata></GetCallerIdentityResponse>`, userID, userID)
			return
		}
	}
	if service == "dynamodb" {
		// DynamoDB signs every response body with X-Amz-Crc32, and the SDK checks it (without
		// the header it compares against 0 and warns on every call): kumo does not send it.
		cw := &crc32Writer{ResponseWriter: w}
		defer cw.finish()
		w = cw
	}
	if e.kumoHandler != nil {
		// Straight into kumo's handler: the same wire protocol, without a second HTTP hop (and
		// its CPU, which at 10 000 requests a second is most of a core on a 2-core machine).
		e.kumoHandler.ServeHTTP(w, r)
		return
	}
	e.proxy.ServeHTTP(w, r)
}

// crc32Writer holds a response until it is complete, then sends it with its X-Amz-Crc32.
type crc32Writer struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *crc32Writer) WriteHeader(status int) { c.status = status }

func (c *crc32Writer) Write(b []byte) (int, error) { return c.body.Write(b) }

func (c *crc32Writer) finish() {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.ResponseWriter.Header().Set("X-Amz-Crc32", strconv.FormatUint(uint64(crc32.ChecksumIEEE(c.body.Bytes())), 10))
	c.ResponseWriter.WriteHeader(c.status)
	_, _ = c.ResponseWriter.Write(c.body.Bytes())
}

// kumoHandler returns the http.Handler inside kumo's httptest server (kumo does not export it),
// or nil, in which case requests go through the reverse proxy to kumo's own listener.
func kumoHandler(k *kumo.Server) (h http.Handler) {
	defer func() {
		if recover() != nil {
			h = nil
		}
	}()
	f := reflect.ValueOf(k).Elem().FieldByName("httpServer")
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.Type() != reflect.TypeOf((*httptest.Server)(nil)) || f.IsNil() {
		return nil
	}
	ts := (*httptest.Server)(unsafe.Pointer(f.Pointer()))
	if ts.Config == nil {
		return nil
	}
	return ts.Config.Handler
}

// MaxMessageSize is SQS's largest message: body and attributes (names, types and values) together.
const MaxMessageSize = 262144

// operation names a request's AWS operation and returns its body (restored for the handlers):
// X-Amz-Target for JSON protocols, Action= for query protocols (EC2, STS).
func operation(service string, r *http.Request) (string, []byte) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if t := r.Header.Get("X-Amz-Target"); t != "" {
		_, op, _ := strings.Cut(t, ".")
		return op, body
	}
	if v, err := url.ParseQuery(string(body)); err == nil && v.Get("Action") != "" {
		return v.Get("Action"), body
	}
	return "unknown", body
}

// sqsMessageSize is what SQS counts toward MaximumMessageSize for a JSON-protocol SendMessage.
func sqsMessageSize(body []byte) int {
	var in struct {
		MessageBody       string
		MessageAttributes map[string]struct{ DataType, StringValue string }
	}
	if json.Unmarshal(body, &in) != nil {
		return 0
	}
	n := len(in.MessageBody)
	for k, a := range in.MessageAttributes {
		n += len(k) + len(a.DataType) + len(a.StringValue)
	}
	return n
}

// SetLatency adds d to every request from now on (15 ms is about a region's round trip).
func (e *Env) SetLatency(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.latency = d
}

// Ops returns the requests counted by operation ("sqs:SendMessage") since the last ResetOps.
func (e *Env) Ops() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int, len(e.ops))
	for k, v := range e.ops {
		out[k] = v
	}
	return out
}

// ResetOps zeroes the operation counts.
func (e *Env) ResetOps() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ops = map[string]int{}
}

// Hold makes requests for a JSON-protocol operation (X-Amz-Target, e.g. "AmazonSQS.DeleteMessage")
// hang until the returned release is called, and then fail with 503 without reaching the
// emulator: a way to stop a client between two calls.
func (e *Env) Hold(target string) (release func()) {
	ch := make(chan struct{})
	e.mu.Lock()
	e.held[target] = ch
	e.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			delete(e.held, target)
			e.mu.Unlock()
			close(ch)
		})
	}
}

// FailAfter lets the next n requests of an operation ("ec2:DescribeInstances") through and
// fails every later one with 503 (retries included) until Recover: an outage in the middle of
// paging.
func (e *Env) FailAfter(op string, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failAfter[op] = n
}

// Recover ends every FailAfter.
func (e *Env) Recover() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failAfter = map[string]int{}
}

// Throttle answers the next n requests of a JSON-protocol operation (X-Amz-Target) with a
// throttling error, as AWS does over a rate limit.
func (e *Env) Throttle(target string, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.throttle[target] = n
}

// Requests returns how many requests the front server has seen for an AWS signing name ("sqs").
func (e *Env) Requests(service string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.requests[service]
}

// Regions returns how many requests that came to the front address host (as in an endpoint URL,
// "10.97.0.1:4566") were signed for each region.
func (e *Env) Regions(host string) map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for k, v := range e.regions[host] {
		out[k] = v
	}
	return out
}

// TCP binds a plain TCP listener in the caller's network namespace.
func TCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Listen adds a front listener on addr made by bind (for example inside a network namespace) and
// returns its URL. Resume calls bind again with the address the first bind got.
func (e *Env) Listen(addr string, bind func(addr string) (net.Listener, error)) (string, error) {
	ln, err := bind(addr)
	if err != nil {
		return "", err
	}
	fl := &frontListener{addr: ln.Addr().String(), bind: bind}
	fl.serve(ln, e.handler)
	e.mu.Lock()
	e.listeners[fl.addr] = fl
	e.mu.Unlock()
	return "http://" + fl.addr, nil
}

func (fl *frontListener) serve(ln net.Listener, h http.Handler) {
	fl.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = fl.srv.Serve(ln) }()
}

// URL is the endpoint of the first (loopback) front listener.
func (e *Env) URL() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, fl := range e.listeners {
		if ip := net.ParseIP(hostOf(fl.addr)); ip != nil && ip.IsLoopback() {
			return "http://" + fl.addr
		}
	}
	return ""
}

func hostOf(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }

// Stop closes every front listener and its connections: clients get "connection refused" until
// Resume. The emulator's state is kept.
func (e *Env) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, fl := range e.listeners {
		if !fl.down {
			_ = fl.srv.Close()
			fl.down = true
		}
	}
}

// Resume reopens the front listeners on the same addresses.
func (e *Env) Resume() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for addr, fl := range e.listeners {
		if !fl.down {
			continue
		}
		var ln net.Listener
		var err error
		// The old socket may linger for a moment; retry the bind briefly.
		for deadline := time.Now().Add(5 * time.Second); ; {
			if ln, err = fl.rebind(addr); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fl.serve(ln, e.handler)
		fl.down = false
	}
	return errors.Join(errs...)
}

func (fl *frontListener) rebind(addr string) (net.Listener, error) {
	ln, err := fl.bind(addr)
	if err != nil {
		return nil, fmt.Errorf("rebind %s: %w", addr, err)
	}
	return ln, nil
}

// Close stops everything.
func (e *Env) Close() {
	e.Stop()
	e.kumo.Close()
}

// Config returns an aws.Config for endpoint (default: the loopback front listener) with static
// test credentials and quick retries.
func (e *Env) Config(endpoint string) aws.Config {
	if endpoint == "" {
		endpoint = e.URL()
	}
	return Config(endpoint)
}

// Config returns an aws.Config pointed at an emulator endpoint.
func Config(endpoint string) aws.Config {
	return aws.Config{
		Region:       Region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDBANSSHEETEST", "secret", ""),
		BaseEndpoint: aws.String(endpoint),
		HTTPClient:   &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second}},
	}
}

// Clients bundles the SDK clients bansshee uses.
type Clients struct {
	SQS      *sqs.Client
	EC2      *ec2.Client
	DynamoDB *dynamodb.Client
	Logs     *cloudwatchlogs.Client
	SNS      *sns.Client
	WAF      *wafv2.Client
}

// NewClients makes SDK clients from cfg.
func NewClients(cfg aws.Config) Clients {
	return Clients{SQS: sqs.NewFromConfig(cfg), EC2: ec2.NewFromConfig(cfg), DynamoDB: dynamodb.NewFromConfig(cfg), Logs: cloudwatchlogs.NewFromConfig(cfg), SNS: sns.NewFromConfig(cfg), WAF: wafv2.NewFromConfig(cfg)}
}

// Launch runs one instance with tags through the real EC2 client, and returns its id.
func Launch(ctx context.Context, c *ec2.Client, tags map[string]string) (string, error) {
	return launch(ctx, c, tags)
}
