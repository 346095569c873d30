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
