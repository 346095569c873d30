package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Set changes go to the kernel over ipset's netlink interface, as `ipset restore` sends them but
// without its process and its text parser: each message carries up to adtPerMessage entries in
// one IPSET_ATTR_ADT container. A single ban is one message (about 0.03 ms; an `ipset` process
// is 1-2 ms); a million are 1 000 messages, and the kernel's own work is what is left. Any error
// leaves the caller to fall back to `ipset restore`, which also creates a missing set.
// An attribute's length is 16 bits, so the container stays under 64 KiB: at most 52 bytes per
// (IPv6) entry.
const adtPerMessage = 1000

const (
	nlaNested    = 1 << 15
	nlaNetOrder  = 1 << 14
	attrHeader   = 4
	ipsetErrBase = 4096 // IPSET_ERR_PRIVATE: errors above it are ipset's own
)

// ipsetADT adds (cmd nl.IPSET_CMD_ADD, with -exist semantics: an entry already there gets the new
// timeout) or deletes (nl.IPSET_CMD_DEL, an entry not there is not an error) prefixes in set.
// timeouts (seconds, 0: none) go with adds.
func ipsetADT(cmd int, set string, prefixes []netip.Prefix, timeouts []int) error {
	return ipsetEach(cmd, set, len(prefixes), timeouts != nil, func(i int) (netip.Prefix, int) {
		if timeouts == nil {
			return prefixes[i], 0
		}
		return prefixes[i], timeouts[i]
	})
}

// ipsetEntries is ipsetADT for set entries (with their timeouts when withTimeouts).
func ipsetEntries(cmd int, set string, es []setEntry, withTimeouts bool) error {
	return ipsetEach(cmd, set, len(es), withTimeouts, func(i int) (netip.Prefix, int) { return es[i].prefix(), es[i].t })
}

// ipsetEach sends n entries, at(i) giving each one's prefix and timeout, adtPerMessage a message.
func ipsetEach(cmd int, set string, n int, withTimeouts bool, at func(int) (netip.Prefix, int)) error {
	for start := 0; start < n; start += adtPerMessage {
		if err := ipsetMessage(cmd, set, start, min(start+adtPerMessage, n), withTimeouts, at); err != nil {
			return err
		}
	}
	return nil
}

func ipsetMessage(cmd int, set string, from, to int, withTimeouts bool, at func(int) (netip.Prefix, int)) error {
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b := make([]byte, 0, 64+(to-from)*52)
	// struct nfgenmsg: family, version, resource id (big endian).
	family := byte(unix.AF_INET)
	if to > from {
		if p, _ := at(from); p.Addr().Is6() {
			family = unix.AF_INET6
		}
	}
	b = append(b, family, nl.NFNETLINK_V0, 0, 0)
	b = attr(b, nl.IPSET_ATTR_PROTOCOL, []byte{nl.IPSET_PROTOCOL})
	b = attr(b, nl.IPSET_ATTR_SETNAME, append([]byte(set), 0))
	// A message with an ADT container needs a line number of its own (the kernel writes the
	// failing element's line back into it).
	b = attr(b, nl.IPSET_ATTR_LINENO, binary.NativeEndian.AppendUint32(nil, 0))
	adt := len(b)
	b = append(b, 0, 0, 0, 0) // IPSET_ATTR_ADT header, length filled in below
	var u32 [4]byte
	for i := from; i < to; i++ {
		p, t := at(i)
		data := len(b)
		b = append(b, 0, 0, 0, 0)
		if withTimeouts {
			binary.BigEndian.PutUint32(u32[:], uint32(t))
			b = attr(b, nl.IPSET_ATTR_TIMEOUT|nlaNetOrder, u32[:])
		}
		ip := len(b)
		b = append(b, 0, 0, 0, 0)
		if p.Addr().Is4() {
			a := p.Addr().As4()
			b = attr(b, nl.IPSET_ATTR_IPADDR_IPV4|nlaNetOrder, a[:])
		} else {
			a := p.Addr().As16()
			b = attr(b, nl.IPSET_ATTR_IPADDR_IPV6|nlaNetOrder, a[:])
		}
		closeNest(b, ip, nl.IPSET_ATTR_IP|nlaNested)
		b = attr(b, nl.IPSET_ATTR_CIDR, []byte{byte(p.Bits())})
		binary.BigEndian.PutUint32(u32[:], uint32(i+1))
		b = attr(b, nl.IPSET_ATTR_LINENO|nlaNetOrder, u32[:])
		closeNest(b, data, nl.IPSET_ATTR_DATA|nlaNested)
	}
	closeNest(b, adt, nl.IPSET_ATTR_ADT|nlaNested)
	req.AddRawData(b)
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if errno, ok := err.(syscall.Errno); ok && int(errno) >= ipsetErrBase {
		return fmt.Errorf("ipset %s: %w", set, nl.IPSetError(uintptr(errno)))
	}
	return err
}

// attr appends one netlink attribute, padded to 4 bytes.
func attr(b []byte, typ int, v []byte) []byte {
	n := attrHeader + len(v)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, uint16(typ))
	b = append(b, v...)
	for n%4 != 0 {
		b = append(b, 0)
		n++
	}
	return b
}

// closeNest writes the header of a nested attribute that starts at off and ends at len(b).
func closeNest(b []byte, off, typ int) {
	binary.NativeEndian.PutUint16(b[off:], uint16(len(b)-off))
	binary.NativeEndian.PutUint16(b[off+2:], uint16(typ))
}

// netlinkAdd adds bans to the ban sets with -exist semantics.
func (f *Firewall) netlinkAdd(bans []Ban, timeouts []int) error {
	bySet := map[string][]int{}
	for i, b := range bans {
		set := f.famOf(b.Prefix).banSet
		bySet[set] = append(bySet[set], i)
	}
	for set, idx := range bySet {
		ps, ts := make([]netip.Prefix, len(idx)), make([]int, len(idx))
		for j, i := range idx {
			ps[j], ts[j] = bans[i].Prefix, timeouts[i]
		}
		if err := ipsetADT(nl.IPSET_CMD_ADD, set, ps, ts); err != nil {
			return err
		}
	}
	return nil
}

// netlinkDel removes prefixes from the ban sets; an entry not there is not an error.
func (f *Firewall) netlinkDel(prefixes []netip.Prefix) error {
	bySet := map[string][]netip.Prefix{}
	for _, p := range prefixes {
		set := f.famOf(p).banSet
		bySet[set] = append(bySet[set], p)
	}
	for set, ps := range bySet {
		if err := ipsetADT(nl.IPSET_CMD_DEL, set, ps, nil); err != nil {
			return err
		}
	}
	return nil
}

// ipsetDump calls fn for every member of set with its remaining timeout (0: none), read with a
// netlink dump (IPSET_CMD_LIST) rather than an `ipset save` process and its text: for a million
// members the kernel's own serialisation is what is left.
func ipsetDump(set string, fn func(netip.Prefix, int)) error {
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_LIST|(unix.NFNL_SUBSYS_IPSET<<8), nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
	b := []byte{unix.AF_INET, nl.NFNETLINK_V0, 0, 0}
	b = attr(b, nl.IPSET_ATTR_PROTOCOL, []byte{nl.IPSET_PROTOCOL})
	b = attr(b, nl.IPSET_ATTR_SETNAME, append([]byte(set), 0))
	req.AddRawData(b)
	var bad error
	err := req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if len(msg) < 4 {
			return true
		}
		eachAttr(msg[4:], func(typ uint16, v []byte) {
			if typ&^nlaNested != nl.IPSET_ATTR_ADT {
				return
			}
			eachAttr(v, func(typ uint16, data []byte) {
				if typ&^nlaNested != nl.IPSET_ATTR_DATA {
					return
				}
				var addr netip.Addr
				bits, t := -1, 0
				eachAttr(data, func(typ uint16, v []byte) {
					switch typ &^ (nlaNested | nlaNetOrder) {
					case nl.IPSET_ATTR_IP:
						eachAttr(v, func(typ uint16, ip []byte) {
							switch typ &^ nlaNetOrder {
							case nl.IPSET_ATTR_IPADDR_IPV4:
								if len(ip) == 4 {
									addr = netip.AddrFrom4([4]byte(ip))
								}
							case nl.IPSET_ATTR_IPADDR_IPV6:
								if len(ip) == 16 {
									addr = netip.AddrFrom16([16]byte(ip))
								}
							}
						})
					case nl.IPSET_ATTR_CIDR:
						if len(v) >= 1 {
							bits = int(v[0])
						}
					case nl.IPSET_ATTR_TIMEOUT:
						if len(v) == 4 {
							t = int(binary.BigEndian.Uint32(v))
						}
					}
				})
				if !addr.IsValid() {
					bad = fmt.Errorf("ipset %s: a member without an address in the dump", set)
					return
				}
				if bits < 0 {
					bits = addr.BitLen()
				}
				fn(netip.PrefixFrom(addr, bits), t)
			})
		})
		return true
	})
	if errno, ok := err.(syscall.Errno); ok && int(errno) >= ipsetErrBase {
		return fmt.Errorf("ipset %s: %w", set, nl.IPSetError(uintptr(errno)))
	}
	if err != nil {
		return err
	}
	return bad
}

// eachAttr walks the netlink attributes in b.
func eachAttr(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= attrHeader {
		n := int(binary.NativeEndian.Uint16(b))
		if n < attrHeader || n > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:]), b[attrHeader:n])
		n = (n + 3) &^ 3
		if n > len(b) {
			return
		}
		b = b[n:]
	}
}
