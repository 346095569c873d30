// Command bansshee-demo runs the whole bansshee story on the embedded AWS emulator and network
// namespaces: what `make demo` runs. It exits 0 only if every expectation held.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	keep := flag.Bool("verbose", false, "print agent logs at the end")
	sandboxMode := flag.Bool("sandbox", false, "start the emulator and a fleet and keep them running for the bansshee CLI, until Ctrl-C")
	dir := flag.String("dir", "", "with --sandbox: where to write the key, env.sh and 'ready' (default: a temp dir)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, `usage: bansshee-demo [--verbose]
       bansshee-demo --sandbox [--dir DIR]

Starts the embedded AWS emulator, a fleet of tagged EC2 instances (3 x Role=mail, 2 x Role=web,
1 x Role=mail,Env=dev), one network namespace per instance with a POP3 server and a real
bansshee-agent, and an attacker. Then: a brute force, a CloudWatch Logs batch through the Lambda
handler, the attacker dropped on every Role=mail host, the classic POP3 rate limit, a new instance
that receives the bans, the ban expiring. Needs root for namespaces and iptables; without root the
same story runs with the firewall in dry-run.

With --sandbox it starts the emulator and a small fleet (real agents in namespaces, a reconciler
every 5 s) and leaves them running: it prints the endpoint, the region, the key file and the
export lines for the bansshee CLI and the AWS CLI, and an attack command. Ctrl-C removes it all.`)
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *sandboxMode {
		if err := sandbox(ctx, *dir); err != nil {
			fmt.Fprintln(os.Stderr, "bansshee-demo --sandbox:", err)
			os.Exit(1)
		}
		return
	}
	start := time.Now()
	d := &demo{verbose: *keep}
	err := d.run(ctx)
	fmt.Println()
	if err != nil {
		fmt.Printf("FAILED after %s: %v\n", time.Since(start).Round(100*time.Millisecond), err)
		os.Exit(1)
	}
	failed := 0
	for _, c := range d.checks {
		if !c.ok {
			failed++
		}
	}
	if failed > 0 {
		fmt.Printf("%d of %d expectations FAILED (%s):\n", failed, len(d.checks), time.Since(start).Round(100*time.Millisecond))
		for _, c := range d.checks {
			if !c.ok {
				fmt.Println("  x", c.what)
			}
		}
		os.Exit(1)
	}
	fmt.Printf("all %d expectations held, in %s. Everything it made is gone.\n", len(d.checks), time.Since(start).Round(100*time.Millisecond))
}

type check struct {
	what string
	ok   bool
}

type demo struct {
	verbose bool
	checks  []check
	step    int
}

func (d *demo) say(format string, args ...any) {
	d.step++
	fmt.Printf("\n%d. %s\n", d.step, fmt.Sprintf(format, args...))
}

func (d *demo) expect(ok bool, format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	d.checks = append(d.checks, check{what, ok})
	mark := "ok  "
	if !ok {
		mark = "FAIL"
	}
	fmt.Printf("   [%s] %s\n", mark, what)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func tagString(tags map[string]string) string {
	var parts []string
	for _, k := range []string{"Role", "Env"} {
		if v, ok := tags[k]; ok {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, ",")
}
