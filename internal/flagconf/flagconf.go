// Package flagconf fills command-line flags that were not given from the environment and then
// from a YAML file, so every option has one name in three places: --queue-prefix,
// BANSSHEE_QUEUE_PREFIX, and queue-prefix: in the file. Flags win over environment over file.
package flagconf

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// EnvName is the environment variable of a flag: prefix + upper snake case.
func EnvName(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply sets every flag of fs not given on the command line from the environment (prefix +
// NAME) or, failing that, from the YAML file at path (if path is not empty).
func Apply(fs *pflag.FlagSet, envPrefix, path string) error {
	file := map[string]any{}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		if err := yaml.Unmarshal(b, &file); err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
		for k := range file {
			if fs.Lookup(k) == nil {
				return fmt.Errorf("config file %s: unknown option %q", path, k)
			}
		}
	}
	var errs []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if v, ok := os.LookupEnv(EnvName(envPrefix, f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", EnvName(envPrefix, f.Name), err))
			}
			return
		}
		v, ok := file[f.Name]
		if !ok {
			return
		}
		vals := []any{v}
		if list, isList := v.([]any); isList {
			vals = list
		}
		for _, item := range vals {
			if err := fs.Set(f.Name, fmt.Sprint(item)); err != nil {
				errs = append(errs, fmt.Sprintf("%s in %s: %v", f.Name, path, err))
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
