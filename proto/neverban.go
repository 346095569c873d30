package proto

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// NeverBanRange is an address range that no ban may cover, anywhere: the controller refuses it at
// every entry, and every agent allowlists it in its kernel. Banning any of them either does nothing
// useful (nobody attacks from them) or cuts an instance off from itself or from EC2's own services.
type NeverBanRange struct {
	Prefix netip.Prefix
	What   string
}

// NeverBan is the one list. The controller and the agent both read it.
var NeverBan = []NeverBanRange{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified (this network)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.169.254 is the instance metadata service, 169.254.169.253 the VPC DNS resolver)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("255.255.255.255/32"), "limited broadcast"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "the EC2 instance metadata service (IPv6)"},
	{netip.MustParsePrefix("fd00:ec2::253/128"), "the EC2 DNS resolver (IPv6)"},
	{netip.MustParsePrefix("fd00:ec2::123/128"), "the Amazon Time Sync Service (IPv6)"},
}

// ErrNeverBan wraps every refusal of a never-ban address.
var ErrNeverBan = errors.New("never banned")

// NeverBanPrefixes returns the list's prefixes (for allowlists).
func NeverBanPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, len(NeverBan))
	for i, r := range NeverBan {
		out[i] = r.Prefix
	}
	return out
}

// CheckNeverBan returns an error wrapping ErrNeverBan when p covers or lies in a never-ban range.
// The whole internet (/0) is refused here too, so no caller can forget it.
func CheckNeverBan(p netip.Prefix) error {
	if p.Bits() == 0 {
		return fmt.Errorf("%s would match every address", p)
	}
	for _, r := range NeverBan {
		if p.Overlaps(r.Prefix) {
			return fmt.Errorf("%w: %s is %s (%s)", ErrNeverBan, p, r.What, r.Prefix)
		}
	}
	return nil
}

// ParseAddr parses one IP address (no prefix, no zone), unmapping IPv4-in-IPv6.
func ParseAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}
