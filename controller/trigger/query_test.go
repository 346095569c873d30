package trigger

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	cwltypes "github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
	"github.com/bansshee/bansshee/internal/awstest"
)

// An alarm whose action is a log query: the handler reads the alarm's log group (through the real
// CloudWatch Logs client, against the emulator) and bans the sources above the threshold.
func TestAlarmLogQueryBansTopSources(t *testing.T) {
	_, clients := awstest.New(t)
	ctx := t.Context()
	group := awstest.Unique("/var/log/maillog")
	if _, err := clients.Logs.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: aws.String(group)}); err != nil {
		t.Fatal(err)
	}
	if _, err := clients.Logs.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: aws.String(group), LogStreamName: aws.String("mail-1")}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var evs []cwltypes.InputLogEvent
	add := func(addr string, n int, age time.Duration) {
		for i := 0; i < n; i++ {
			evs = append(evs, cwltypes.InputLogEvent{Timestamp: aws.Int64(now.Add(-age).UnixMilli()),
				Message: aws.String(fmt.Sprintf("pop3[%d]: badlogin: host [%s] plaintext user SASL(-13): authentication failure", i, addr))})
		}
	}
	add("174.132.223.252", 25, time.Minute) // above the threshold, in the window
	add("198.51.100.4", 5, time.Minute)     // below
	add("203.0.113.99", 40, 30*time.Minute) // above, but before the window
	evs = append(evs, cwltypes.InputLogEvent{Timestamp: aws.Int64(now.UnixMilli()), Message: aws.String("pop3[1]: login ok")})
	if _, err := clients.Logs.PutLogEvents(ctx, &cloudwatchlogs.PutLogEventsInput{LogGroupName: aws.String(group), LogStreamName: aws.String("mail-1"), LogEvents: evs}); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte(`{"alarms":{"pop3-failures":{"query":{"log_group":"` + group + `","jail":"cyrus","window":"10m","threshold":20},"target":"Role=mail","ttl":"1h"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Cfg: cfg, Counter: &MemCounter{}, Logs: clients.Logs}
	msg, _ := json.Marshal(map[string]any{"AlarmName": "pop3-failures", "NewStateValue": "ALARM", "Trigger": map[string]any{"MetricName": "LoginFailures"}})
	ev, _ := json.Marshal(map[string]any{"Records": []any{map[string]any{"EventSource": "aws:sns", "Sns": map[string]any{"Message": string(msg)}}}})
	out, err := h.Handle(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Bans) != 1 || out.Bans[0].CIDR != "174.132.223.252/32" || out.Bans[0].Target != "Role=mail" || !strings.Contains(out.Bans[0].Reason, "25 lines") {
		t.Fatalf("decisions %+v", out)
	}
	if len(out.Ignored) != 1 || !strings.Contains(out.Ignored[0].Reason, "198.51.100.4: 5 lines") {
		t.Fatalf("ignored %+v", out.Ignored)
	}
	if _, err := ParseConfig([]byte(`{"alarms":{"x":{"query":{"log_group":"g","jail":"nope"}}}}`)); err == nil {
		t.Fatal("a query naming an unknown jail was accepted")
	}
}
