// Package fleet stands up a small bansshee fleet on one machine for end-to-end tests, the demo
// and benchmarks: the embedded AWS emulator, one network namespace per EC2 instance with a POP3
// server and a real bansshee-agent process, and an attacker namespace. Root only.
package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

// Fleet is the whole set-up.
type Fleet struct {
	Env      *awstest.Env
	Clients  awstest.Clients
	Lab      *netns.Lab
	Endpoint string // the emulator as the namespaces see it (on the lab bridge)
	Signer   proto.Signer
	KeyFile  string // public key file for the agents
	Dir      string
	Queues   *controller.Queues
	AgentBin string
	Attacker *netns.Host
	Table    string

	mu    sync.Mutex
	nodes []*Node
}

// Node is one instance: its namespace, POP3 server and agent.
type Node struct {
	ID       string
	Tags     map[string]string
	Host     *netns.Host
	Server   *netns.Server
	StateDir string
	Log      *syncBuffer
	cmd      *exec.Cmd
	done     chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// AgentRoleID is the agent role id a fleet's ledger records (the emulator does not enforce queue
// policies; the agents' credentials are not role sessions).
const AgentRoleID = "AROAFLEETAGENTROLE"

// Options tune a fleet.
type Options struct {
	AgentBin          string // default: built into Dir
	VisibilityTimeout int    // seconds, default 2 (short, so redeliveries are quick in tests)
	Table             string // ledger table the agents heartbeat to; empty: none
}

// New starts the emulator and an empty lab, builds the agent if needed, and makes a signing key.
func New(ctx context.Context, opts Options) (*Fleet, error) {
	dir, err := os.MkdirTemp("", "bansshee-fleet-")
	if err != nil {
		return nil, err
	}
	f := &Fleet{Dir: dir, Table: opts.Table}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if f.AgentBin = opts.AgentBin; f.AgentBin == "" {
		if f.AgentBin, err = BuildAgent(ctx, dir); err != nil {
			return nil, err
		}
	}
	if f.Env, err = awstest.Start(); err != nil {
		return nil, err
	}
	f.Clients = awstest.NewClients(f.Env.Config(""))
	if f.Lab, err = netns.New(); err != nil {
		return nil, err
	}
	lan := f.Lab.Lan
	f.Endpoint, err = f.Env.Listen(net.JoinHostPort(f.Lab.LanIP4.String(), "4566"), func(addr string) (net.Listener, error) {
		var ln net.Listener
		err := lan.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", addr)
			return err
		})
		return ln, err
	})
	if err != nil {
		return nil, err
	}
	if f.Attacker, err = f.Lab.AddHost("attacker"); err != nil {
		return nil, err
	}
	if f.Signer, err = proto.GenerateKey("fleet-1"); err != nil {
		return nil, err
	}
	f.KeyFile = filepath.Join(dir, "keys.pub")
	if err := os.WriteFile(f.KeyFile, []byte(f.Signer.MarshalPublic()), 0o644); err != nil {
		return nil, err
	}
	vis := opts.VisibilityTimeout
	if vis == 0 {
		vis = 2
	}
	f.Queues = &controller.Queues{SQS: f.Clients.SQS, VisibilityTimeout: vis, Prefix: awstest.Unique("bansshee"), AgentRoleID: AgentRoleID}
	if opts.Table != "" {
		// As the stack's Lambda does: controllers create queues only with the agent role's id.
		l := &controller.Ledger{DDB: f.Clients.DynamoDB, Table: opts.Table}
		if err := l.CreateTable(ctx); err != nil {
			return nil, err
		}
		if err := l.RecordAgentRoleID(ctx, AgentRoleID); err != nil {
			return nil, err
		}
	}
	ok = true
	return f, nil
}

// RunTests is a TestMain for packages that run fleets: it builds the agent once into *bin (when
// namespaces are available), runs the tests, and removes the build.
func RunTests(m *testing.M, bin *string) int {
	if netns.Available() == nil {
		dir, err := os.MkdirTemp("", "bansshee-agent-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if *bin, err = BuildAgent(context.Background(), dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

// BuildAgent compiles cmd/bansshee-agent into dir.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "bansshee-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/bansshee/bansshee/cmd/bansshee-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %v: %s", err, out)
	}
	return bin, nil
}

// Close stops every agent and removes the lab, the emulator and the temp dir.
func (f *Fleet) Close() {
	f.mu.Lock()
	nodes := f.nodes
	f.mu.Unlock()
	for _, n := range nodes {
		f.KillAgent(n)
		if n.Server != nil {
			n.Server.Close()
		}
	}
	if f.Lab != nil {
		f.Lab.Close()
	}
	if f.Env != nil {
		f.Env.Close()
	}
	os.RemoveAll(f.Dir)
}

// AddNode launches an EC2 instance with tags (through the real EC2 client), gives it a namespace
// and a POP3 server on port 110. The queue and the agent are separate steps.
func (f *Fleet) AddNode(ctx context.Context, tags map[string]string) (*Node, error) {
	id, err := awstest.Launch(ctx, f.Clients.EC2, tags)
	if err != nil {
		return nil, err
	}
	h, err := f.Lab.AddHost(fmt.Sprintf("n%d", len(f.nodes)+1))
	if err != nil {
		return nil, err
	}
	srv, err := netns.Serve(&h.NS, 110)
	if err != nil {
		return nil, err
	}
	n := &Node{ID: id, Tags: tags, Host: h, Server: srv, StateDir: filepath.Join(f.Dir, id), Log: &syncBuffer{}}
	if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.nodes = append(f.nodes, n)
	f.mu.Unlock()
	return n, nil
}

// Nodes returns the nodes in the order they were added.
func (f *Fleet) Nodes() []*Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*Node(nil), f.nodes...)
}

// StartAgent starts bansshee-agent inside the node's namespace.
func (f *Fleet) StartAgent(n *Node, extra ...string) error {
	return f.startAgent(n, []string{"--instance-id", n.ID, "--region", awstest.Region},
		[]string{"AWS_EC2_METADATA_DISABLED=true", "AWS_ACCESS_KEY_ID=AKIDBANSSHEETEST", "AWS_SECRET_ACCESS_KEY=secret"}, extra)
}

// StartAgentOnEC2 starts the agent as the documented install does on an instance: no instance id,
// no region, no credentials: all from the instance metadata service at imdsURL.
func (f *Fleet) StartAgentOnEC2(n *Node, imdsURL string, extra ...string) error {
	return f.startAgent(n, nil, []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imdsURL, "AWS_EC2_METADATA_DISABLED=false"}, extra)
}

func (f *Fleet) startAgent(n *Node, identity, env, extra []string) error {
	args := append([]string{"run", "--endpoint-url", f.Endpoint}, identity...)
	args = append(args, "--public-key", f.KeyFile, "--state-dir", n.StateDir, "--table", f.Table, "--queue-prefix", f.Queues.Prefix,
		"--metrics-addr", net.JoinHostPort(n.Host.IP4.String(), "9749"), "--reconcile-interval", "2s", "--heartbeat-keepalive", "2s", "--log-level", "debug",
		// kumo does not wake a waiting long poll for a message whose visibility timeout ends
		// (real SQS does); a short wait keeps redeliveries quick here.
		"--poll-wait", "3")
	cmd := exec.Command(f.AgentBin, append(args, extra...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = n.Log, n.Log
	if err := f.Lab.Start(&n.Host.NS, cmd); err != nil {
		return err
	}
	n.cmd = cmd
	n.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) {
		_ = c.Wait()
		close(done)
	}(cmd, n.done)
	return nil
}

// Pid is the agent's process id (0 when not running). `ip netns exec` execs the agent, so the
// pid it started with is the agent's.
func (n *Node) Pid() int {
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// StopAgent sends sig to the agent and waits for it to exit.
func (f *Fleet) StopAgent(n *Node, sig syscall.Signal) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	// The agent runs under `ip netns exec`, which execs it: the pid is the agent's.
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
		return errors.New("agent did not stop within 30 s")
	}
	n.cmd = nil
	return nil
}

// KillAgent is StopAgent with SIGKILL.
func (f *Fleet) KillAgent(n *Node) { _ = f.StopAgent(n, syscall.SIGKILL) }

// Reachable reports whether the attacker, from src (or its main address), gets the POP3 banner
// from the node within timeout.
func (f *Fleet) Reachable(n *Node, src netip.Addr, timeout time.Duration) bool {
	return netns.Connect(&f.Attacker.NS, src, netip.AddrPortFrom(n.Host.IP4, 110), timeout) == nil
}

// WaitReachable polls until reachability is want or the deadline passes; it returns how long it took.
func (f *Fleet) WaitReachable(n *Node, src netip.Addr, want bool, deadline time.Duration) (time.Duration, bool) {
	start := time.Now()
	for {
		if f.Reachable(n, src, 150*time.Millisecond) == want {
			return time.Since(start), true
		}
		if time.Since(start) > deadline {
			return time.Since(start), false
		}
	}
}

// HTTPGet fetches a URL from inside the node's namespace (for /metrics on its address).
func (n *Node) HTTPGet(ctx context.Context, path string) (string, error) {
	var out []byte
	err := n.Host.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(n.Host.IP4.String(), "9749"))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: agent\r\n\r\n", path)
		var b bytes.Buffer
		_, err = b.ReadFrom(c)
		out = b.Bytes()
		return err
	})
	return string(out), err
}
