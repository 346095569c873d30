package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/netns"
)

// sandbox starts the emulator and a small fleet and leaves them running until ctx ends (Ctrl-C),
// for a user to drive with the real CLI: LocalStack's experience without Docker.
func sandbox(ctx context.Context, dir string) error {
	if err := netns.Available(); err != nil {
		return fmt.Errorf("the sandbox runs real agents in network namespaces: %w (run it as root)", err)
	}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "bansshee-sandbox-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	fmt.Println("bansshee sandbox: starting the embedded AWS emulator and a fleet (2 x Role=mail, 1 x Role=web) ...")
	w, err := newRealWorld(ctx)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\nstopping: agents, namespaces (with their chains and sets) and the emulator are removed.")
		w.Close()
	}()
	c := w.Controller()
	var names []string
	for _, tags := range []map[string]string{{"Role": "mail"}, {"Role": "mail"}, {"Role": "web"}} {
		tags["bansshee:managed"] = "true"
		h, err := w.AddInstance(ctx, tags)
		if err != nil {
			return err
		}
		n := h.(realHost).n
		names = append(names, fmt.Sprintf("  %s  %-10s %s (POP3 on port 110)", n.ID, tagString(n.Tags), n.Host.IP4))
	}
	if _, err := c.ReconcileOnce(ctx); err != nil {
		return err
	}
	for _, n := range w.f.Nodes() {
		if err := w.f.StartAgent(n); err != nil {
			return err
		}
	}
	// The reconciler, as `bansshee serve` would run it.
	go c.Serve(ctx, 5*time.Second, nil)

	key := filepath.Join(dir, "sandbox.key")
	if err := os.WriteFile(key, []byte(w.f.Signer.MarshalPrivate()), 0o600); err != nil {
		return err
	}
	env := []string{
		"AWS_ENDPOINT_URL=" + w.f.Env.URL(), "AWS_REGION=" + awstest.Region, "AWS_ACCESS_KEY_ID=sandbox", "AWS_SECRET_ACCESS_KEY=sandbox",
		"AWS_EC2_METADATA_DISABLED=true", "BANSSHEE_ENDPOINT_URL=" + w.f.Env.URL(), "BANSSHEE_REGION=" + awstest.Region,
		"BANSSHEE_TABLE=" + w.Table(), "BANSSHEE_QUEUE_PREFIX=" + w.f.Queues.Prefix, "BANSSHEE_KEY=" + key,
	}
	var exports strings.Builder
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&exports, "export %s='%s'\n", k, v)
	}
	envFile := filepath.Join(dir, "env.sh")
	if err := os.WriteFile(envFile, []byte(exports.String()), 0o600); err != nil {
		return err
	}
	atk, mail := w.f.Attacker, w.f.Nodes()[0]
	fmt.Printf(`
Sandbox ready.
  endpoint   %s   (region %s; any access key)
  ledger     table %s, queues %s-<instance-id>.fifo
  key        %s
  instances
%s
  attacker   %s, namespace %s

In another shell:
  source %s
  bin/bansshee status
  bin/bansshee ban %s --target Role=mail --wait
  ip netns exec %s bash -c 'exec 3<>/dev/tcp/%s/110 && head -1 <&3'   # the attacker: now dropped
  bin/bansshee unban %s
  aws --endpoint-url "$AWS_ENDPOINT_URL" sqs list-queues                  # the AWS CLI works too

Ctrl-C here removes everything.
`, w.f.Env.URL(), awstest.Region, w.Table(), w.f.Queues.Prefix, key, strings.Join(names, "\n"), atk.IP4, atk.Name,
		envFile, atk.IP4, atk.Name, mail.Host.IP4, atk.IP4)
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte("ready\n"), 0o644); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
