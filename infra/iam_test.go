package infra

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	"gopkg.in/yaml.v3"
)

// Which code runs under which identity.
var roles = map[string]struct {
	resource string   // logical id in the template
	dirs     []string // packages whose AWS calls that identity makes
	skip     []string // files of those packages it never runs
}{
	"agent":      {"AgentRole", []string{"agent", "cmd/bansshee-agent"}, nil},
	"controller": {"ControllerPolicy", []string{"controller", "cmd/bansshee", "internal/cli"}, nil},
	"lambda":     {"LambdaRole", []string{"controller", "controller/trigger", "cmd/bansshee-lambda", "internal/cli"}, []string{"ledger_admin.go", "exposure.go"}},
}

// implied are permissions an API call needs besides its own action.
var implied = map[string][]string{"sqs:CreateQueue": {"sqs:TagQueue"}} // CreateQueue with Tags

// operations lists an SDK client's API operations, by reflection on its methods.
func operations(client any, prefix string) map[string]string {
	ops := map[string]string{}
	tp := reflect.TypeOf(client)
	for i := 0; i < tp.NumMethod(); i++ {
		m := tp.Method(i)
		if m.Type.NumIn() == 4 && m.Type.NumOut() == 2 && strings.HasSuffix(m.Type.Out(0).String(), "Output") {
			ops[m.Name] = prefix + ":" + m.Name
		}
	}
	return ops
}

// callsIn finds every SDK operation the non-test Go files of dir call, directly or through a
// paginator (NewXPaginator calls X).
func callsIn(t *testing.T, dir string, skip []string, ops map[string]map[string]string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	call := regexp.MustCompile(`\.(?:New)?([A-Z][A-Za-z0-9]+?)(?:Paginator)?\(`)
	clientUse := map[string]*regexp.Regexp{
		"sqs": regexp.MustCompile(`(?i)sqs`), "dynamodb": regexp.MustCompile(`(?i)ddb|dynamodb`),
		"ec2": regexp.MustCompile(`EC2`), "ssm": regexp.MustCompile(`ssm`), "logs": regexp.MustCompile(`(?i)cloudwatchlogs|\.Logs\b`),
		"sns":   regexp.MustCompile(`\.SNS\.`),
		"wafv2": regexp.MustCompile(`(?i)waf`),
	}
	found := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || slices.Contains(skip, filepath.Base(f)) {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(src), "\n") {
			for _, m := range call.FindAllStringSubmatch(line, -1) {
				for svc, table := range ops {
					if action, ok := table[m[1]]; ok && clientUse[svc].MatchString(line) {
						found[action] = true
					}
				}
			}
		}
	}
	return found
}

func grantedActions(t *testing.T, tp *template, logical string) (map[string]bool, []string) {
	t.Helper()
	res := tp.resources[logical]
	if res == nil {
		t.Fatalf("no resource %s", logical)
	}
	granted := map[string]bool{}
	var wildcardResources []string
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			var actions []string
			resource, deny := "", false
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i].Value, n.Content[i+1]
				switch k {
				case "Effect":
					deny = v.Value == "Deny" // a Deny grants nothing
				case "Action":
					if v.Kind == yaml.SequenceNode {
						for _, a := range v.Content {
							actions = append(actions, a.Value)
						}
					} else {
						actions = append(actions, v.Value)
					}
				case "Resource":
					resource = v.Value
				}
			}
			for _, a := range actions {
				if a == "sts:AssumeRole" || deny {
					continue
				}
				granted[a] = true
				if resource == "*" {
					wildcardResources = append(wildcardResources, a)
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(res)
	return granted, wildcardResources
}

func TestIAMGrantsExactlyTheCallsTheCodeMakes(t *testing.T) {
	ops := map[string]map[string]string{
		"sqs": operations(&sqs.Client{}, "sqs"), "dynamodb": operations(&dynamodb.Client{}, "dynamodb"),
		"ec2": operations(&ec2.Client{}, "ec2"), "ssm": operations(&ssm.Client{}, "ssm"),
		"logs": operations(&cloudwatchlogs.Client{}, "logs"), "sns": operations(&sns.Client{}, "sns"), "wafv2": operations(&wafv2.Client{}, "wafv2"),
	}
	if len(ops["ec2"]) < 100 || ops["sqs"]["ReceiveMessage"] != "sqs:ReceiveMessage" {
		t.Fatalf("reflection found too few operations: %d ec2", len(ops["ec2"]))
	}
	tp := loadTemplate(t)
	// Describe and List calls have no resource-level permissions; nothing else may use "*".
	wildcardOK := map[string]bool{"ec2:DescribeInstances": true, "ec2:DescribeVpcs": true, "ec2:DescribeAddresses": true, "ec2:DescribeNatGateways": true, "sqs:ListQueues": true, "ec2:DescribeSecurityGroups": true}
	for name, r := range roles {
		t.Run(name, func(t *testing.T) {
			needed := map[string]bool{}
			for _, d := range r.dirs {
				for a := range callsIn(t, d, r.skip, ops) {
					needed[a] = true
					for _, x := range implied[a] {
						needed[x] = true
					}
				}
			}
			granted, wild := grantedActions(t, tp, r.resource)
			var missing, extra []string
			for a := range needed {
				if !granted[a] {
					missing = append(missing, a)
				}
			}
			for a := range granted {
				if strings.Contains(a, "*") {
					t.Errorf("%s grants a wildcard action %s", r.resource, a)
				}
				if !needed[a] && a != "logs:CreateLogStream" && a != "logs:PutLogEvents" { // the Lambda runtime's own logging
					extra = append(extra, a)
				}
			}
			for _, a := range wild {
				if !wildcardOK[a] {
					t.Errorf("%s grants %s on every resource", r.resource, a)
				}
			}
			sort.Strings(missing)
			sort.Strings(extra)
			if len(missing) > 0 {
				t.Errorf("%s lacks %v, which the code calls", r.resource, missing)
			}
			if len(extra) > 0 {
				t.Errorf("%s grants %v, which the code never calls", r.resource, extra)
			}
			if len(needed) < 3 {
				t.Fatalf("found only %v: is the scanner reading the code?", needed)
			}
			t.Logf("%s: %d actions, all granted", r.resource, len(needed))
		})
	}
}
