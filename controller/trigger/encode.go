package trigger

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/events"
)

var eventSeq atomic.Int64

// EncodeLogsEvent builds a CloudWatch Logs subscription event (gzip, base64, as Lambda receives
// it) holding lines from group, timestamped now: for tests, the demo and replaying logs by hand.
func EncodeLogsEvent(group string, lines []string) []byte {
	return EncodeLogsEventStream(group, "bansshee", lines)
}

// EncodeLogsEventStream is EncodeLogsEvent from a named log stream (the CloudWatch agent names
// streams for their instance, {instance_id}, by default).
func EncodeLogsEventStream(group, stream string, lines []string) []byte {
	data := events.CloudwatchLogsData{Owner: "123456789012", LogGroup: group, LogStream: stream, SubscriptionFilters: []string{"bansshee"}, MessageType: "DATA_MESSAGE"}
	now := time.Now()
	for _, l := range lines {
		// CloudWatch Logs event ids are unique numbers; these are too (the handler dedupes by them).
		id := fmt.Sprintf("%020d%020d", now.UnixNano(), eventSeq.Add(1))
		data.LogEvents = append(data.LogEvents, events.CloudwatchLogsLogEvent{ID: id, Timestamp: now.UnixMilli(), Message: l})
	}
	plain, _ := json.Marshal(data)
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write(plain)
	_ = zw.Close()
	ev, _ := json.Marshal(map[string]any{"awslogs": map[string]string{"data": base64.StdEncoding.EncodeToString(zb.Bytes())}})
	return ev
}
