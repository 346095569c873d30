// Package trigger turns AWS alerts into bansshee bans: CloudWatch Logs subscription batches
// matched by fail2ban-style jails, CloudWatch alarm state changes (SNS or EventBridge), GuardDuty
// findings, schedules (a reconcile pass) and direct invokes. It decides; the controller acts.
package trigger

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Duration is a time.Duration written as "10m" in JSON.
type Duration time.Duration

// UnmarshalJSON reads "90s", "2h" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration: want \"10m\" or seconds, got %s", b)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as "10m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Jail is fail2ban's idea: maxretry failures from one address within findtime ban it for bantime
// on target. Patterns come from a builtin, from regex/failregex (fail2ban's <HOST> syntax or a
// named group (?P<addr>...)), and lines matching an ignoreregex are not failures.
type Jail struct {
	Name        string   `json:"name"`
	Builtin     string   `json:"builtin,omitempty"` // start from a built-in jail, override the rest
	Regex       string   `json:"regex,omitempty"`
	FailRegex   []string `json:"failregex,omitempty"`
	IgnoreRegex []string `json:"ignoreregex,omitempty"`
	MaxRetry    int      `json:"maxretry,omitempty"`
	FindTime    Duration `json:"findtime,omitempty"`
	BanTime     Duration `json:"bantime,omitempty"`
	Target      string   `json:"target,omitempty"`
	Mode        string   `json:"mode,omitempty"` // "enforce" (default) or "simulate": record, ban nothing
	// Witnesses: with N > 1, an address a log stream reports is banned at once on that stream's
	// instance only, and on Target when N distinct streams have reported it within findtime.
	Witnesses int `json:"witnesses,omitempty"`
	// IPv6Prefix bans (and counts) IPv6 sources by this prefix: 128 (the default) to 48.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	rules        []rule
	conns        bool // a rule speaks of connections: lines are followed by pid or session
	bySession    bool // followed by session id, not pid
	tag          *regexp.Regexp
	comms        []string
	fail, ignore []*regexp.Regexp
	msgIgnore    []*regexp.Regexp
}

// AlarmAction says what an alarm in ALARM state does: ban the addresses in its metric dimensions,
// or (with Query) read the alarm's log group over a window and ban the top sources.
type AlarmAction struct {
	// Dimensions names metric dimensions whose values are addresses to ban (default "SourceIP").
	Dimensions []string  `json:"dimensions,omitempty"`
	Query      *LogQuery `json:"query,omitempty"`
	Target     string    `json:"target,omitempty"`
	TTL        Duration  `json:"ttl,omitempty"`
	Mode       string    `json:"mode,omitempty"` // "enforce" (default) or "simulate"
}

// LogQuery finds the sources behind an alarm: the lines of LogGroup from the last Window that a
// jail's regex matches, counted per address; the Top addresses with at least Threshold lines are
// banned. (CloudWatch Logs Insights would answer the same question asynchronously; FilterLogEvents
// with the jail's own regex is synchronous, cheaper for an alarm window, and needs one permission.)
type LogQuery struct {
	LogGroup  string   `json:"log_group"`
	Jail      string   `json:"jail"`                // a configured jail whose regex finds the address
	Filter    string   `json:"filter,omitempty"`    // CloudWatch filter pattern to narrow the read
	Window    Duration `json:"window,omitempty"`    // default 10m
	Threshold int      `json:"threshold,omitempty"` // default 20
	Top       int      `json:"top,omitempty"`       // default 10
	MaxEvents int      `json:"max_events,omitempty"`

	jail *Jail
}

// GuardDuty bans the remote addresses of findings at or above MinSeverity.
type GuardDuty struct {
	Enabled     bool     `json:"enabled"`
	MinSeverity float64  `json:"min_severity,omitempty"` // default 4 (medium)
	Target      string   `json:"target,omitempty"`
	TTL         Duration `json:"ttl,omitempty"`
	Mode        string   `json:"mode,omitempty"` // "enforce" (default) or "simulate"
}

// Config is the trigger configuration, validated at cold start.
type Config struct {
	Jails         []Jail                 `json:"jails"`
	Alarms        map[string]AlarmAction `json:"alarms,omitempty"` // by alarm name; "*" for any
	GuardDuty     GuardDuty              `json:"guardduty"`
	DefaultTarget string                 `json:"default_target,omitempty"`
	DefaultTTL    Duration               `json:"default_ttl,omitempty"`
	// StreamFleetBans caps the bans on a jail's target that one log stream can cause in an hour
	// (default 20; -1: no cap). Past it, the stream's bans apply only to its own instance (the
	// stream must be named for it, as the CloudWatch agent's default {instance_id} is).
	StreamFleetBans int `json:"stream_fleet_bans_per_hour,omitempty"`
	// MaxBatchBytes bounds a decompressed log batch (default 32 MiB).
	MaxBatchBytes int `json:"max_batch_bytes,omitempty"`
}

// DefaultJails are the built-in jails with fail2ban's defaults: 5 failures in 10 minutes ban for 2 hours.
func DefaultJails() []Jail {
	return []Jail{{Name: "cyrus", Builtin: "cyrus"}, {Name: "dovecot", Builtin: "dovecot"}, {Name: "sshd", Builtin: "sshd"}, {Name: "postfix-sasl", Builtin: "postfix-sasl"}}
}

// ParseConfig reads and validates a configuration; an empty text is the defaults.
func ParseConfig(text []byte) (*Config, error) {
	cfg := &Config{}
	if len(strings.TrimSpace(string(text))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(text)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("trigger config: %w", err)
		}
	}
	if cfg.Jails == nil {
		cfg.Jails = DefaultJails()
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("trigger config: %w", err)
	}
	return cfg, nil
}

// Simulate is the mode of a jail, alarm action or GuardDuty setting that records what it would
// ban (history, why, a metric) and bans nothing.
const Simulate = "simulate"

// checkModes refuses a mode other than enforce or simulate.
func (c *Config) checkModes() error {
	bad := func(m string) bool { return m != "" && m != "enforce" && m != Simulate }
	for _, j := range c.Jails {
		if bad(j.Mode) {
			return fmt.Errorf("jail %s: mode %q: want enforce or simulate", j.Name, j.Mode)
		}
	}
	for name, a := range c.Alarms {
		if bad(a.Mode) {
			return fmt.Errorf("alarm %s: mode %q: want enforce or simulate", name, a.Mode)
		}
	}
	if bad(c.GuardDuty.Mode) {
		return fmt.Errorf("guardduty: mode %q: want enforce or simulate", c.GuardDuty.Mode)
	}
	return nil
}

func (c *Config) validate() error {
	if err := c.checkModes(); err != nil {
		return err
	}
	if c.DefaultTarget == "" {
		c.DefaultTarget = "*"
	}
	if c.DefaultTTL == 0 {
		c.DefaultTTL = Duration(2 * time.Hour)
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = 32 << 20
	}
	seen := map[string]bool{}
	for i := range c.Jails {
		j := &c.Jails[i]
		if j.Name == "" {
			return fmt.Errorf("jails[%d]: name is required", i)
		}
		if seen[j.Name] {
			return fmt.Errorf("jails[%d]: duplicate name %q", i, j.Name)
		}
		seen[j.Name] = true
		if err := j.compile(); err != nil {
			return err
		}
		if j.MaxRetry == 0 {
			j.MaxRetry = 5
		}
		if j.MaxRetry < 1 || j.MaxRetry > 100000 {
			return fmt.Errorf("jail %s: maxretry %d is not in 1-100000", j.Name, j.MaxRetry)
		}
		if j.FindTime == 0 {
			j.FindTime = Duration(10 * time.Minute)
		}
		if j.BanTime == 0 {
			j.BanTime = c.DefaultTTL
		}
		if j.Target == "" {
			j.Target = c.DefaultTarget
		}
		if j.Witnesses < 0 || j.Witnesses > 1000 {
			return fmt.Errorf("jail %s: witnesses %d is not in 1-1000", j.Name, j.Witnesses)
		}
		if j.Witnesses == 0 {
			j.Witnesses = 1
		}
		if j.IPv6Prefix == 0 {
			j.IPv6Prefix = 128
		}
		if j.IPv6Prefix < 48 || j.IPv6Prefix > 128 {
			return fmt.Errorf("jail %s: ipv6_prefix %d is not in 48-128 (a /48 is a whole site; broader is never a jail's decision)", j.Name, j.IPv6Prefix)
		}
	}
	if c.StreamFleetBans == 0 {
		c.StreamFleetBans = 20
	}
	if c.StreamFleetBans < -1 {
		return fmt.Errorf("stream_fleet_bans_per_hour %d: want a number of bans, or -1 for no cap", c.StreamFleetBans)
	}
	if c.GuardDuty.MinSeverity == 0 {
		c.GuardDuty.MinSeverity = 4
	}
	if c.GuardDuty.Target == "" {
		c.GuardDuty.Target = c.DefaultTarget
	}
	if c.GuardDuty.TTL == 0 {
		c.GuardDuty.TTL = Duration(24 * time.Hour)
	}
	for name, a := range c.Alarms {
		if len(a.Dimensions) == 0 {
			a.Dimensions = []string{"SourceIP"}
		}
		if q := a.Query; q != nil {
			if q.LogGroup == "" {
				return fmt.Errorf("alarm %s: query.log_group is required", name)
			}
			for i := range c.Jails {
				if c.Jails[i].Name == q.Jail {
					q.jail = &c.Jails[i]
				}
			}
			if q.jail == nil {
				return fmt.Errorf("alarm %s: query.jail %q is not a configured jail", name, q.Jail)
			}
			if q.Window == 0 {
				q.Window = Duration(10 * time.Minute)
			}
			if q.Threshold == 0 {
				q.Threshold = 20
			}
			if q.Top == 0 {
				q.Top = 10
			}
			if q.MaxEvents == 0 {
				q.MaxEvents = 200000
			}
		}
		if a.Target == "" {
			a.Target = c.DefaultTarget
		}
		if a.TTL == 0 {
			a.TTL = c.DefaultTTL
		}
		c.Alarms[name] = a
	}
	return nil
}
