package trigger

import (
	"regexp"
	"time"
)

// ConnState is what is known of one daemon connection (one tag and pid in one log stream) that
// was still open when a batch ended, kept for the next batch of the same stream.
type ConnState struct {
	Addr     string `json:"a" dynamodbav:"a"`
	Attempts int    `json:"n,omitempty" dynamodbav:"n,omitempty"`
	Marker   bool   `json:"m,omitempty" dynamodbav:"m,omitempty"`
	Refused  bool   `json:"r,omitempty" dynamodbav:"r,omitempty"`
	Counted  int    `json:"c,omitempty" dynamodbav:"c,omitempty"`
}

// connTTL is how long an open connection's state is kept between batches: longer than sshd's
// LoginGraceTime (2 minutes), within which a pre-authentication connection always ends.
const connTTL = 10 * time.Minute

// Tally is what one log stream's batch adds up to for one jail.
type Tally struct {
	Hits  map[string]int // failures by address
	Lines map[string]int // lines that named the address (counted or not)
	Order []string       // addresses in the order they were first counted
	// Open are the connections still open at the end of the batch, by connection key; Closed the
	// keys of connections a previous batch left open that ended (or logged in) in this one.
	Open   map[string]ConnState
	Closed []string
}

type connAcc struct {
	stored  bool // loaded from prior: kept in the ledger, to be forgotten when it ends
	st      ConnState
	ended   bool
	success bool
}

// connKey names a verdict's connection within its stream: its session (Dovecot) or its tag and
// pid (sshd); "" for a jail that follows no connections, or a line that names none.
func (j *Jail) connKey(v Verdict) string {
	switch {
	case !j.conns:
		return ""
	case j.bySession:
		if v.Sess == "" {
			return ""
		}
		return "session<" + v.Sess + ">"
	}
	return ConnKey(v.Rec)
}

// ConnKey names a line's connection within its stream: the tag and the pid ("" without a pid).
func ConnKey(rec Record) string {
	if rec.PID == "" {
		return ""
	}
	return rec.Tag + "[" + rec.PID + "]"
}

// NeedsConns reports whether verdicts hold lines of connections, whose earlier state a Tally of
// them needs.
func (j *Jail) NeedsConns(vs []Verdict) bool {
	if !j.conns {
		return false
	}
	for _, v := range vs {
		if v.Kind != KindNone && j.connKey(v) != "" {
			return true
		}
	}
	return false
}

// Tally counts a batch's verdicts (in the order the lines were written) for one log stream.
// Attempts count at once; a connection that failed without an attempt (an invalid user, a user
// AllowUsers refuses) counts one, at once; one whose only failure is a refused key counts one when
// it ends without logging in; a connection is never counted twice, and nothing on a connection
// that logs in within the batch is counted. prior holds the connections a previous batch left open.
func (j *Jail) Tally(vs []Verdict, prior map[string]ConnState) *Tally {
	return j.tally(vs, prior, false)
}

// TallyAll is Tally over a whole log (a file, an alarm's window): every connection still open at
// its end has ended.
func (j *Jail) TallyAll(vs []Verdict) *Tally { return j.tally(vs, nil, true) }

func (j *Jail) tally(vs []Verdict, prior map[string]ConnState, final bool) *Tally {
	t := &Tally{Hits: map[string]int{}, Lines: map[string]int{}, Open: map[string]ConnState{}}
	add := func(addr string, n int) {
		if n <= 0 {
			return
		}
		if t.Hits[addr] == 0 {
			t.Order = append(t.Order, addr)
		}
		t.Hits[addr] += n
	}
	finish := func(c *connAcc) {
		if c.success {
			return
		}
		want := c.st.Attempts
		if c.st.Marker || c.ended && c.st.Refused {
			want = max(want, 1)
		}
		if d := want - c.st.Counted; d > 0 {
			add(c.st.Addr, d)
			c.st.Counted = want
		}
	}
	conns := map[string]*connAcc{}
	seen := map[string]bool{} // prior applies to a key's first connection in the batch only
	var order []string
	for _, v := range vs {
		if v.Kind == KindNone {
			continue
		}
		key := j.connKey(v)
		if v.Addr == "" {
			// A line that names no address belongs to its connection, if the connection is known.
			c := conns[key]
			if c == nil && !seen[key] {
				if p, ok := prior[key]; ok && key != "" {
					c = &connAcc{st: p, stored: true}
					seen[key] = true
					conns[key] = c
					order = append(order, key)
				}
			}
			if c == nil || c.st.Addr == "" {
				continue
			}
			v.Addr = c.st.Addr
		}
		t.Lines[v.Addr]++
		if key == "" {
			// No pid, so no connection to follow: a line counts for what it says on its own.
			switch v.Kind {
			case KindAttempt:
				add(v.Addr, v.Count)
			case KindEndUser:
				add(v.Addr, 1)
			}
			continue
		}
		c := conns[key]
		if c == nil {
			c = &connAcc{}
			if p, ok := prior[key]; ok && !seen[key] {
				c.st, c.stored = p, true
			}
			seen[key] = true
			conns[key] = c
			order = append(order, key)
		}
		if c.st.Addr != "" && c.st.Addr != v.Addr {
			// The pid now serves another source: the earlier connection ended unseen.
			finish(c)
			*c = connAcc{stored: c.stored}
		}
		c.st.Addr = v.Addr
		switch {
		case v.Kind == KindAttempt && j.bySession:
			// A login line sums up its session: its count, or the session's attempt lines if
			// more were seen; the session has ended.
			c.st.Attempts = max(c.st.Attempts, v.Count)
			c.ended = true
		case v.Kind == KindSessAttempt:
			c.st.Attempts++
		}
		switch v.Kind {
		case KindAttempt:
			if !j.bySession {
				c.st.Attempts += v.Count
			}
			c.st.Marker = true
		case KindMarker:
			c.st.Marker = true
		case KindRefused:
			c.st.Refused = true
		case KindEndUser:
			c.st.Marker, c.ended = true, true
		case KindEnd:
			c.ended = true
			if c.st.Refused {
				c.st.Marker = true
			}
		case KindSuccess:
			c.success = true
		}
		if c.ended || c.success {
			finish(c)
			if c.stored {
				t.Closed = append(t.Closed, key)
			}
			delete(conns, key)
		}
	}
	for _, key := range order {
		c, ok := conns[key]
		if !ok {
			continue
		}
		if final {
			c.ended = true
		}
		finish(c) // what failed so far counts now; a refused key waits for the connection's end
		t.Open[key] = c.st
	}
	return t
}

// instanceRe finds an EC2 instance id in a log stream name: the CloudWatch agent names streams
// {instance_id} by default.
var instanceRe = regexp.MustCompile(`(?:^|[^0-9a-z])(i-[0-9a-f]{8}(?:[0-9a-f]{9})?)(?:$|[^0-9a-z])`)

// InstanceOfStream returns the instance id a log stream is named for, or "".
func InstanceOfStream(stream string) string {
	if m := instanceRe.FindStringSubmatch(stream); m != nil {
		return m[1]
	}
	return ""
}
