package netns

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// SpoofSYN sends, from inside ns, count TCP SYNs to dst from each of srcs, which need not be
// addresses of ns: the packets are written raw (IP_HDRINCL), as a SYN flood with forged sources
// is. Nothing answers them back (the lab has no route to a forged source), so no handshake ever
// completes. IPv4 only.
func SpoofSYN(ns *NS, srcs []netip.Addr, dst netip.AddrPort, count int) error {
	if !dst.Addr().Is4() {
		return fmt.Errorf("spoof: %s: IPv4 only", dst)
	}
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
		pkt := make([]byte, 40)
		for i, src := range srcs {
			if !src.Is4() {
				return fmt.Errorf("spoof: %s: IPv4 only", src)
			}
			for n := 0; n < count; n++ {
				synPacket(pkt, src, dst, uint16(20000+(i*count+n)%40000), uint32(i*7919+n))
				if err := unix.Sendto(fd, pkt, 0, to); err != nil {
					return fmt.Errorf("send spoofed SYN from %s: %w", src, err)
				}
			}
		}
		return nil
	})
}

// synPacket writes a 20-byte IPv4 header and a 20-byte TCP SYN into b.
func synPacket(b []byte, src netip.Addr, dst netip.AddrPort, sport uint16, seq uint32) {
	s, d := src.As4(), dst.Addr().As4()
	clear(b)
	b[0], b[8], b[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(b[2:], 40)
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b[:20], 0))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12], t[13] = 5<<4, 0x02 // data offset 5 words, SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	// The TCP checksum covers a pseudo-header: addresses, protocol, TCP length.
	var sum uint32
	for _, w := range [][]byte{s[:], d[:]} {
		sum += uint32(binary.BigEndian.Uint16(w[0:])) + uint32(binary.BigEndian.Uint16(w[2:]))
	}
	sum += unix.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(t[16:], checksum(t, sum))
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
