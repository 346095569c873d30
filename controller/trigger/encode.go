package trigger

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/aws/aws-lambda-go/events"
)

// EncodeLogsEvent builds a CloudWatch Logs subscription event (gzip, base64, as Lambda receives
// it) holding lines from group, timestamped now: for tests, the demo and replaying logs by hand.
func EncodeLogsEvent(group string, lines []string) []byte {
	data := events.CloudwatchLogsData{Owner: "123456789012", LogGroup: group, LogStream: "bansshee", SubscriptionFilters: []string{"bansshee"}, MessageType: "DATA_MESSAGE"}
	now := time.Now().UnixMilli()
	for i, l := range lines {
		data.LogEvents = append(data.LogEvents, events.CloudwatchLogsLogEvent{ID: fmt.Sprint(i), Timestamp: now, Message: l})
	}
	plain, _ := json.Marshal(data)
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write(plain)
	_ = zw.Close()
	ev, _ := json.Marshal(map[string]any{"awslogs": map[string]string{"data": base64.StdEncoding.EncodeToString(zb.Bytes())}})
	return ev
}
