package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Banner is what the harness's TCP server greets with, POP3 style.
const Banner = "+OK bansshee-lab POP3 ready"

// Server is a TCP (POP3-speaking) and UDP (echo) server inside a namespace.
type Server struct {
	tcp  net.Listener
	udp  net.PacketConn
	wg   sync.WaitGroup
	once sync.Once
	mu   sync.Mutex
	// Logins counts PASS commands seen, per source address.
	logins map[netip.Addr]int
}

// Serve starts servers on port (TCP and UDP, all addresses of ns). Close stops them.
func Serve(ns *NS, port int) (*Server, error) {
	s := &Server{logins: map[netip.Addr]int{}}
	err := ns.Do(func() error {
		var err error
		if s.tcp, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		s.udp, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("serve in %s: %w", ns.Name, err)
	}
	s.wg.Add(2)
	go s.acceptLoop()
	go s.echoLoop()
	return s, nil
}

// Logins returns how many PASS commands src has sent.
func (s *Server) Logins(src netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins[src]
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.pop3(c)
		}()
	}
}

// pop3 speaks just enough POP3 for a brute force: every password is wrong.
func (s *Server) pop3(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	src := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
	fmt.Fprintf(c, "%s\r\n", Banner)
	r := bufio.NewScanner(c)
	for r.Scan() {
		cmd, _, _ := strings.Cut(strings.ToUpper(strings.TrimSpace(r.Text())), " ")
		switch cmd {
		case "USER":
			fmt.Fprint(c, "+OK\r\n")
		case "PASS":
			s.mu.Lock()
			s.logins[src]++
			s.mu.Unlock()
			fmt.Fprint(c, "-ERR [AUTH] authentication failed\r\n")
		case "QUIT":
			fmt.Fprint(c, "+OK bye\r\n")
			return
		default:
			fmt.Fprint(c, "-ERR unknown command\r\n")
		}
	}
}

func (s *Server) echoLoop() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, addr, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = s.udp.WriteTo(buf[:n], addr)
	}
}

// Close stops the server and waits for its goroutines.
func (s *Server) Close() {
	s.once.Do(func() {
		if s.tcp != nil {
			s.tcp.Close()
		}
		if s.udp != nil {
			s.udp.Close()
		}
	})
	s.wg.Wait()
}

// ErrBlocked is returned by Connect when nothing answered before the timeout.
var ErrBlocked = errors.New("no answer (dropped)")

// Connect opens a TCP connection from ns (from address src, if valid) to dst and reads the banner.
// A connection that does not complete within timeout returns an error wrapping ErrBlocked.
func Connect(ns *NS, src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	c, err := dial(ns, src, dst, timeout)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("connect %s -> %s: %w", src, dst, ErrBlocked)
		}
		return fmt.Errorf("connect %s -> %s: %w", src, dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read banner from %s: %w", dst, err)
	}
	if !strings.HasPrefix(line, Banner) {
		return fmt.Errorf("unexpected banner %q", line)
	}
	return nil
}

// BruteForce logs in n times with a wrong password from ns (src) to dst, one connection each,
// and returns how many attempts reached the server before the first that was dropped.
func BruteForce(ctx context.Context, ns *NS, src netip.Addr, dst netip.AddrPort, n int, timeout time.Duration) (int, error) {
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			return i, ctx.Err()
		}
		c, err := dial(ns, src, dst, timeout)
		if err != nil {
			return i, err
		}
		_ = c.SetDeadline(time.Now().Add(timeout))
		r := bufio.NewReader(c)
		_, _ = r.ReadString('\n')
		fmt.Fprintf(c, "USER admin\r\n")
		_, _ = r.ReadString('\n')
		fmt.Fprintf(c, "PASS guess%d\r\n", i)
		_, err = r.ReadString('\n')
		c.Close()
		if err != nil {
			return i, err
		}
	}
	return n, nil
}

// dial opens a TCP connection from inside ns, from address src if it is valid.
func dial(ns *NS, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	return c, err
}

// Echo sends one UDP datagram from ns (from src, if valid) to dst and waits for the echo. An
// answer that does not come within timeout is an error wrapping ErrBlocked.
func Echo(ns *NS, src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{}
		if src.IsValid() {
			d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.Dial("udp", dst.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("bansshee")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("udp %s -> %s: %w", src, dst, ErrBlocked)
		}
		return err
	}
	if string(buf[:n]) != "bansshee" {
		return fmt.Errorf("udp echo %q", buf[:n])
	}
	return nil
}

// Dial opens a TCP connection from inside ns, from address src if it is valid (for clients of
// real daemons that the lab runs).
func Dial(ns *NS, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	return dial(ns, src, dst, timeout)
}
