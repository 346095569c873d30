package infra

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/bansshee/bansshee/agent"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/controller/trigger"
	"github.com/prometheus/client_golang/prometheus"
)

// Every metric the CloudWatch dashboard and the stack's alarms read in the bansshee namespace is
// one the Lambda publishes.
func TestCloudWatchDashboardUsesEmittedMetrics(t *testing.T) {
	b, err := os.ReadFile("cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	var used []string
	for _, m := range regexp.MustCompile(`\["bansshee", "([A-Za-z]+)"`).FindAllStringSubmatch(text, -1) {
		used = append(used, m[1])
	}
	for _, m := range regexp.MustCompile(`MetricName=\\"([A-Za-z]+)\\"`).FindAllStringSubmatch(text, -1) {
		used = append(used, m[1])
	}
	for _, m := range regexp.MustCompile(`(?m)Namespace: bansshee\n\s+MetricName: ([A-Za-z]+)`).FindAllStringSubmatch(text, -1) {
		used = append(used, m[1])
	}
	if len(used) < 10 {
		t.Fatalf("found only %v", used)
	}
	for _, name := range used {
		if !slices.Contains(trigger.EMFMetrics, name) {
			t.Errorf("the stack reads bansshee/%s, which the Lambda never publishes (EMFMetrics: %v)", name, trigger.EMFMetrics)
		}
	}
	// The dashboard body is JSON once !Sub has filled it.
	start := strings.Index(text, "DashboardBody: !Sub |")
	body := text[start+len("DashboardBody: !Sub |"):]
	body = body[:strings.Index(body, "\n\n")]
	body = regexp.MustCompile(`\$\{[^}]+\}`).ReplaceAllString(body, "x")
	var v any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("dashboard body is not JSON: %v", err)
	}
}

// exported returns every metric name the agent and `bansshee serve` export.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	am, cm := agent.NewMetrics(), controller.NewMetrics()
	// Vectors appear once they hold a series.
	am.Applied.WithLabelValues("ban")
	am.Repairs.WithLabelValues("set")
	am.AWSErrors.WithLabelValues("ReceiveMessage")
	cm.Decisions.WithLabelValues("escalation")
	cm.FeedRefreshes.WithLabelValues("spamhaus", "ok")
	cm.FeedEntries.WithLabelValues("spamhaus")
	am.ApplySeconds.Observe(0.001)
	am.LagSeconds.Observe(0.1)
	names := map[string]bool{}
	for _, g := range []prometheus.Gatherer{am.Registry, cm.Registry} {
		fams, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			names[f.GetName()] = true
		}
	}
	return names
}

// Every series the Grafana dashboard queries is one the agent or the reconciler exports.
func TestGrafanaDashboardQueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/bansshee.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	have := exported(t)
	seen := map[string]bool{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range regexp.MustCompile(`bansshee_[a-z0-9_]+`).FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if !have[base] {
					t.Errorf("panel %q queries %s, which nothing exports", p.Title, name)
				}
				seen[base] = true
			}
		}
	}
	var unseen []string
	for n := range have {
		if !seen[n] && strings.HasPrefix(n, "bansshee_") {
			unseen = append(unseen, n)
		}
	}
	sort.Strings(unseen)
	t.Logf("exported but not on the dashboard: %v", unseen)
}
