package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

// IMDSv2: a PUT for a session token, then GETs that carry it. Requests without the token are
// refused, as on an instance that requires IMDSv2.
func TestInstanceIDFromIMDSv2(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			if r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" {
				http.Error(w, "ttl required", http.StatusBadRequest)
				return
			}
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			w.Write([]byte("tok-123"))
		case r.Method == http.MethodGet && r.URL.Path == "/latest/meta-data/instance-id":
			if r.Header.Get("X-Aws-Ec2-Metadata-Token") != "tok-123" {
				http.Error(w, "", http.StatusUnauthorized)
				return
			}
			w.Write([]byte("i-0abc123def4567890"))
		case r.URL.Path == "/latest/meta-data/network/interfaces/macs/":
			w.Write([]byte("0e:aa:bb:cc:dd:01/\n0e:aa:bb:cc:dd:02/"))
		case r.URL.Path == "/latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:01/vpc-ipv4-cidr-blocks":
			w.Write([]byte("10.0.0.0/16\n100.64.0.0/16"))
		case r.URL.Path == "/latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:01/vpc-ipv6-cidr-blocks":
			w.Write([]byte("2600:1f18:abc::/56"))
		case r.URL.Path == "/latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:02/vpc-ipv4-cidr-blocks":
			w.Write([]byte("10.0.0.0/16"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.URL)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := instanceFromIMDS(context.Background(), imds.NewFromConfig(cfg))
	if err != nil || id != "i-0abc123def4567890" {
		t.Fatalf("got %q, %v", id, err)
	}
	vpcs, err := vpcFromIMDS(context.Background(), imds.NewFromConfig(cfg))
	if err != nil || fmt.Sprint(vpcs) != "[10.0.0.0/16 100.64.0.0/16 2600:1f18:abc::/56]" {
		t.Fatalf("VPC CIDRs %v, %v", vpcs, err)
	}
	srv.Close() // off EC2: a clear error within the deadline
	start := time.Now()
	_, err = instanceFromIMDS(context.Background(), imds.NewFromConfig(cfg))
	if err == nil || !strings.Contains(err.Error(), "give --instance-id off EC2") || time.Since(start) > 10*time.Second {
		t.Fatalf("unreachable IMDS: %v after %v", err, time.Since(start))
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	s, _ := proto.GenerateKey("k1")
	pub := filepath.Join(dir, "k.pub")
	os.WriteFile(pub, []byte(s.MarshalPublic()), 0o644)
	m := &proto.Message{ID: "m1", Kind: proto.KindBan, IssuedAt: time.Now().UTC(), Rev: 3, Bans: []proto.Ban{{CIDR: "198.51.100.7", ExpiresAt: time.Now().Add(time.Hour), Reason: "test"}}}
	body, attrs, _ := s.Encode(m)
	write := func(name, body string, attrs map[string]string) string {
		var b strings.Builder
		b.WriteString(`{"Body":` + quote(body) + `,"MessageAttributes":{`)
		i := 0
		for k, v := range attrs {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(quote(k) + `:{"StringValue":` + quote(v) + `,"DataType":"String"}`)
			i++
		}
		b.WriteString("}}")
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(b.String()), 0o644)
		return p
	}
	good := write("good.json", string(body), attrs)
	attrs["bansshee-sig"] = "AAAA"
	bad := write("bad.json", string(body), attrs)
	run := func(file string) (string, error) {
		o := &options{stateDir: dir}
		c := checkCmd(o)
		var out strings.Builder
		c.SetOut(&out)
		c.SetArgs([]string{"--file", file, "--public-key", pub})
		c.SilenceUsage, c.SilenceErrors = true, true
		oldStdout := os.Stdout
		r, w, _ := os.Pipe()
		os.Stdout = w
		err := c.Execute()
		w.Close()
		os.Stdout = oldStdout
		buf := make([]byte, 4096)
		n, _ := r.Read(buf)
		return string(buf[:n]), err
	}
	out, err := run(good)
	if err != nil || !strings.Contains(out, "valid") || !strings.Contains(out, "+ ban 198.51.100.7/32") {
		t.Fatalf("good message: %q %v", out, err)
	}
	if _, err := run(bad); err == nil || !strings.Contains(err.Error(), "refused (bad_signature)") {
		t.Fatalf("bad signature: %v", err)
	}
}

func quote(s string) string {
	b, _ := jsonMarshal(s)
	return string(b)
}

// check --hooks names what is missing, then what is in place once the firewall is applied.
func TestCheckHooks(t *testing.T) {
	p := netns.NewPair(t)
	o := &options{}
	var out strings.Builder
	err := p.Victim.Do(func() error { return printHooks(t.Context(), o, &out) })
	if err == nil || !strings.Contains(err.Error(), "ipv4: INPUT -> BANSSHEE") || !strings.Contains(err.Error(), "ipv4: FORWARD -> BANSSHEE-FWD") {
		t.Fatalf("before install: %v, want the missing hooks named", err)
	}
	var fw *firewall.Firewall
	if err := p.Victim.Do(func() error {
		var err error
		if fw, err = firewall.New(firewall.Config{}); err != nil {
			return err
		}
		_, err = fw.Apply(t.Context(), firewall.State{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Victim.Do(func() error { return fw.Uninstall(context.Background()) }) })
	out.Reset()
	if err := p.Victim.Do(func() error { return printHooks(t.Context(), o, &out) }); err != nil {
		t.Fatalf("after install: %v\n%s", err, out.String())
	}
	for _, want := range []string{"forward mode dnat", "ipv4: no Docker", "INPUT rule 1 -> BANSSHEE:", "FORWARD rule 1 -> BANSSHEE-FWD:", "--ctstate DNAT", "all hooks in place"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check --hooks output lacks %q:\n%s", want, out.String())
		}
	}
}
