package infra

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type template struct {
	root       *yaml.Node
	params     map[string]bool
	resources  map[string]*yaml.Node // logical id -> resource node
	conditions map[string]bool
}

func loadTemplate(t *testing.T) *template {
	t.Helper()
	b, err := os.ReadFile("cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("template does not parse: %v", err)
	}
	tp := &template{root: doc.Content[0], params: map[string]bool{}, resources: map[string]*yaml.Node{}, conditions: map[string]bool{}}
	for i := 0; i+1 < len(tp.root.Content); i += 2 {
		k, v := tp.root.Content[i].Value, tp.root.Content[i+1]
		for j := 0; j+1 < len(v.Content); j += 2 {
			switch k {
			case "Parameters":
				tp.params[v.Content[j].Value] = true
			case "Resources":
				tp.resources[v.Content[j].Value] = v.Content[j+1]
			case "Conditions":
				tp.conditions[v.Content[j].Value] = true
			}
		}
	}
	return tp
}

var pseudo = map[string]bool{"AWS::Region": true, "AWS::AccountId": true, "AWS::Partition": true, "AWS::StackName": true, "AWS::NoValue": true, "AWS::URLSuffix": true}

var subVar = regexp.MustCompile(`\$\{([^}!][^}]*)\}`)

func (tp *template) walk(n *yaml.Node, visit func(*yaml.Node)) {
	visit(n)
	for _, c := range n.Content {
		tp.walk(c, visit)
	}
}

func TestTemplateReferencesResolve(t *testing.T) {
	tp := loadTemplate(t)
	if len(tp.resources) < 15 {
		t.Fatalf("only %d resources parsed", len(tp.resources))
	}
	known := func(name string) bool { return tp.params[name] || tp.resources[name] != nil || pseudo[name] }
	var refs int
	tp.walk(tp.root, func(n *yaml.Node) {
		switch n.Tag {
		case "!Ref":
			refs++
			if !known(n.Value) {
				t.Errorf("line %d: !Ref %s resolves to nothing", n.Line, n.Value)
			}
		case "!GetAtt":
			refs++
			res, _, _ := strings.Cut(n.Value, ".")
			if tp.resources[res] == nil {
				t.Errorf("line %d: !GetAtt %s: no resource %s", n.Line, n.Value, res)
			}
		case "!Sub":
			s := n.Value
			if n.Kind == yaml.SequenceNode {
				s = n.Content[0].Value // variables of the map form are checked as they are used
			}
			for _, m := range subVar.FindAllStringSubmatch(s, -1) {
				refs++
				name, _, _ := strings.Cut(m[1], ".")
				if !known(name) {
					t.Errorf("line %d: !Sub ${%s} resolves to nothing", n.Line, m[1])
				}
			}
		case "!If":
			if len(n.Content) > 0 && !tp.conditions[n.Content[0].Value] {
				t.Errorf("line %d: !If on unknown condition %s", n.Line, n.Content[0].Value)
			}
		}
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "DependsOn" && tp.resources[n.Content[i+1].Value] == nil {
					t.Errorf("line %d: DependsOn %s: no such resource", n.Line, n.Content[i+1].Value)
				}
			}
		}
	})
	if refs < 30 {
		t.Fatalf("only %d references checked: is the walker reading the template?", refs)
	}
}

// The trigger Lambda's and the controller's queue permissions cover instance queues, not the DLQ
// and not the queues of another stack whose prefix starts the same way.
func TestQueuePermissionsCoverInstanceQueuesOnly(t *testing.T) {
	b, err := os.ReadFile("cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	arn := regexp.MustCompile(`:\$\{AWS::AccountId\}:(\$\{Prefix\}-i-[^"]*)"`)
	var pats []*regexp.Regexp
	for _, m := range arn.FindAllStringSubmatch(string(b), -1) {
		p := strings.ReplaceAll(m[1], "${Prefix}", "bansshee")
		p = regexp.QuoteMeta(p)
		p = strings.ReplaceAll(strings.ReplaceAll(p, `\?`, "."), `\*`, ".*")
		pats = append(pats, regexp.MustCompile("^"+p+"$"))
	}
	if len(pats) < 2 {
		t.Fatalf("found %d instance-queue patterns", len(pats))
	}
	if strings.Contains(string(b), `${AWS::AccountId}:${Prefix}-*"`) {
		t.Fatal("a statement still grants ${Prefix}-* (the DLQ and other stacks' queues)")
	}
	match := func(name string) bool {
		for _, p := range pats {
			if p.MatchString(name) {
				return true
			}
		}
		return false
	}
	for name, want := range map[string]bool{
		"bansshee-i-0123456789abcdef0.fifo": true, "bansshee-i-0123abcd.fifo": true,
		"bansshee-dlq.fifo": false, "bansshee-other-queue.fifo": false, "bansshee-i-0123456789abcdef0-x.fifo": false,
	} {
		if match(name) != want {
			t.Errorf("%s covered = %v, want %v", name, !want, want)
		}
	}
}

// documentedVariables are the IAM policy variables the templates may use, each with the page that
// documents its value for the callers bansshee has (an EC2 instance-profile session).
var documentedVariables = map[string]string{
	"aws:userid": "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#policy-vars-infotouse",
}

// Every IAM policy variable in the template is a documented one, and its page is cited there.
func TestIAMPolicyVariablesAreDocumented(t *testing.T) {
	b, err := os.ReadFile("cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	// In !Sub strings an IAM variable is written ${!name}; elsewhere ${name}. CloudFormation's
	// own references (parameters, resources, AWS:: pseudo parameters) carry no service prefix.
	found := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$\{!?([A-Za-z0-9]+:[A-Za-z0-9:/_-]+)\}`).FindAllStringSubmatch(text, -1) {
		if strings.HasPrefix(m[1], "AWS::") {
			continue
		}
		found[m[1]] = true
	}
	if !found["aws:userid"] {
		t.Fatalf("the agent policy should scope its status item by ${aws:userid}; found %v", found)
	}
	for v := range found {
		url, ok := documentedVariables[v]
		if !ok {
			t.Errorf("policy variable ${%s} is not one AWS documents for EC2 role credentials", v)
			continue
		}
		if !strings.Contains(text, url) {
			t.Errorf("${%s}: the template does not cite %s beside it", v, url)
		}
	}
}

// Queue policies are the isolation between instances: only the controller and the Lambda may
// rewrite them (issue 22, finding 1), never an agent.
func TestOnlyTheControlPlaneSetsQueueAttributes(t *testing.T) {
	tp := loadTemplate(t)
	for logical, want := range map[string]bool{"ControllerPolicy": true, "LambdaRole": true, "AgentRole": false} {
		granted, _ := grantedActions(t, tp, logical)
		if granted["sqs:SetQueueAttributes"] != want {
			t.Errorf("%s: sqs:SetQueueAttributes granted = %v, want %v", logical, !want, want)
		}
	}
}
