// Command bansshee-demo runs the whole bansshee story on the embedded AWS emulator and network
// namespaces: what `make demo` runs.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, `bansshee-demo: not built yet.
It will start the embedded AWS emulator, a fleet of tagged instances each in its own network
namespace with a POP3 server and a real agent, and an attacker; then show the attacker dropped on
every Role=mail host within a second of the ban. Until then, run 'make test'.`)
	os.Exit(2)
}
