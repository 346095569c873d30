package main

import (
	"bytes"
	"strings"
	"testing"
)

const run = `{"Action":"run","Package":"p/a","Test":"TestOK"}
{"Action":"pass","Package":"p/a","Test":"TestOK","Elapsed":0.1}
{"Action":"output","Package":"p/a","Test":"TestKernel","Output":"    x_test.go:9: SKIP (kernel): network namespaces need root\n"}
{"Action":"skip","Package":"p/a","Test":"TestKernel","Elapsed":0}
{"Action":"pass","Package":"p/a","Elapsed":0.2}
`

func TestSkipsAreCountedAndFailUnderCI(t *testing.T) {
	var out bytes.Buffer
	code, err := report(strings.NewReader(run), &out, false)
	if err != nil || code != 0 {
		t.Fatalf("outside CI: %d %v", code, err)
	}
	for _, want := range []string{"SKIPPED (1)", "TestKernel: x_test.go:9: SKIP (kernel): network namespaces need root", "1 passed, 0 failed, 1 skipped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code, _ := report(strings.NewReader(run), &out, true); code != 1 || !strings.Contains(out.String(), "CI=true and tests were skipped") {
		t.Fatalf("under CI: exit %d\n%s", code, out.String())
	}
	fail := strings.Replace(run, `"pass","Package":"p/a","Test":"TestOK"`, `"fail","Package":"p/a","Test":"TestOK"`, 1)
	if code, _ := report(strings.NewReader(fail), &out, false); code != 1 {
		t.Fatalf("a failure exits %d", code)
	}
}
