package trigger

import (
	"encoding/json"
	"io"
	"sort"
	"time"

	"github.com/bansshee/bansshee/controller"
)

// The Lambda publishes its metrics as CloudWatch embedded metric format lines on stdout: one JSON
// object per line in the function's log, which CloudWatch turns into metrics with no extra call.
const EMFNamespace = "bansshee"

// EMFMetrics is every metric the Lambda publishes; the stack's dashboard and alarms use no other
// (infra/template_test.go checks).
var EMFMetrics = []string{"Decisions", "Ignored", "FleetInstances", "BansActive", "LimitsActive",
	"AgentsConverged", "AgentsLagging", "AgentsSilent", "AgentsUnreported", "Escalations", "Syncs",
	"FeedRefreshesFailed", "FeedRefreshesHeld", "StreamCapped", "Simulated"}

type emfMetric struct {
	Name string `json:"Name"`
	Unit string `json:"Unit"`
}

func emfLine(w io.Writer, now time.Time, dims []string, values map[string]any, units map[string]string) error {
	names := make([]string, 0, len(units))
	for n := range units {
		names = append(names, n)
	}
	sort.Strings(names)
	ms := make([]emfMetric, len(names))
	for i, n := range names {
		ms[i] = emfMetric{n, units[n]}
	}
	doc := map[string]any{"_aws": map[string]any{"Timestamp": now.UnixMilli(),
		"CloudWatchMetrics": []any{map[string]any{"Namespace": EMFNamespace, "Dimensions": [][]string{dims}, "Metrics": ms}}}}
	for k, v := range values {
		doc[k] = v
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeEMF publishes what one event did (decisions and ignored entries, with the event kind as the
// Trigger dimension: cloudwatch-logs, sns, eventbridge-alarm, guardduty, direct-ban) and, after a
// reconcile pass, the fleet's state.
func writeEMF(w io.Writer, out *Output, rep *controller.Report, now time.Time) error {
	if rep == nil {
		return emfLine(w, now, []string{"Trigger"}, map[string]any{"Trigger": out.Kind, "Decisions": len(out.Bans), "Ignored": len(out.Ignored), "StreamCapped": out.StreamCapped,
			"Simulated": len(out.Simulated)},
			map[string]string{"Decisions": "Count", "Ignored": "Count", "StreamCapped": "Count", "Simulated": "Count"})
	}
	f := rep.Fleet
	failed, held := 0, 0
	for _, r := range rep.Feeds {
		switch controller.FeedResult(r) {
		case "failed":
			failed++
		case "held":
			held++
		}
	}
	return emfLine(w, now, []string{}, map[string]any{"FleetInstances": f.Instances, "BansActive": f.BansActive, "LimitsActive": f.LimitsActive,
		"AgentsConverged": f.Converged, "AgentsLagging": f.Lagging, "AgentsSilent": f.Silent, "AgentsUnreported": f.Unreported,
		"Escalations": len(rep.Escalated), "Syncs": len(rep.Synced), "FeedRefreshesFailed": failed, "FeedRefreshesHeld": held},
		map[string]string{"FleetInstances": "Count", "BansActive": "Count", "LimitsActive": "Count", "AgentsConverged": "Count", "AgentsLagging": "Count",
			"AgentsSilent": "Count", "AgentsUnreported": "Count", "Escalations": "Count", "Syncs": "Count", "FeedRefreshesFailed": "Count", "FeedRefreshesHeld": "Count"})
}
