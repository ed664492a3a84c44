// ttrpc_peer: a real containerd ttrpc peer (github.com/containerd/ttrpc from
// Debian's golang-github-containerd-ttrpc-dev), built offline in GOPATH mode
// by the test set-up, never committed as a binary. Modes:
//
//	ttrpc_peer interop ADDR   run the interop checks against a server that
//	                          serves test.Svc (Echo, Fail, Meta, Park)
//	ttrpc_peer server ADDR    serve test.Svc/Echo (the benchmark baseline)
//	ttrpc_peer bench ADDR CALLERS SECONDS SIZE
//	                          unary Echo load on one connection; prints
//	                          "calls=N secs=S p50_us=X p99_us=Y"
//
// Messages are raw bytes (a type with Marshal/Unmarshal), so no generated
// code is needed.
package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type raw struct{ b []byte }

func (m *raw) Reset()                   { m.b = nil }
func (m *raw) String() string           { return fmt.Sprintf("%x", m.b) }
func (m *raw) ProtoMessage()            {}
func (m *raw) Marshal() ([]byte, error) { return m.b, nil }
func (m *raw) Unmarshal(p []byte) error { m.b = append([]byte(nil), p...); return nil }

func dial(addr string) *ttrpc.Client {
	conn, err := net.Dial("unix", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial %s: %v\n", addr, err)
		os.Exit(2)
	}
	return ttrpc.NewClient(conn)
}

func call(c *ttrpc.Client, ctx context.Context, method string, in []byte) ([]byte, error) {
	var resp raw
	err := c.Call(ctx, "test.Svc", method, &raw{in}, &resp)
	return resp.b, err
}

func interop(addr string) int {
	c := dial(addr)
	defer c.Close()
	passed, failed := 0, 0
	check := func(name string, err error) {
		if err != nil {
			failed++
			fmt.Printf("interop: FAIL %s: %v\n", name, err)
		} else {
			passed++
			fmt.Printf("interop: ok %s\n", name)
		}
	}
	bg := context.Background()

	check("unary echo", func() error {
		out, err := call(c, bg, "Echo", []byte{0x0a, 0x02, 'h', 'i'})
		if err != nil {
			return err
		}
		if !bytes.Equal(out, []byte{0x0a, 0x02, 'h', 'i'}) {
			return fmt.Errorf("got %x", out)
		}
		return nil
	}())
	check("error status", func() error {
		_, err := call(c, bg, "Fail", nil)
		st, _ := status.FromError(err)
		if st.Code() != codes.NotFound || st.Message() != "no such thing" {
			return fmt.Errorf("got %v", err)
		}
		return nil
	}())
	check("unknown method", func() error {
		_, err := call(c, bg, "Nope", nil)
		st, _ := status.FromError(err)
		if st.Code() != codes.Unimplemented || st.Message() != "method Nope" {
			return fmt.Errorf("got %v", err)
		}
		return nil
	}())
	check("unknown service", func() error {
		var resp raw
		err := c.Call(bg, "no.Such", "X", &raw{}, &resp)
		st, _ := status.FromError(err)
		if st.Code() != codes.Unimplemented || st.Message() != "service no.Such" {
			return fmt.Errorf("got %v", err)
		}
		return nil
	}())
	check("metadata", func() error {
		md := ttrpc.MD{}
		md.Set("a", "1", "2")
		md.Set("b", "3")
		ctx := ttrpc.WithMetadata(bg, md)
		out, err := call(c, ctx, "Meta", nil)
		if err != nil {
			return err
		}
		s := string(out)
		// map order is random in Go: a's values stay in order
		if s != "a=1;a=2;b=3;" && s != "b=3;a=1;a=2;" {
			return fmt.Errorf("got %q", s)
		}
		return nil
	}())
	check("deadline", func() error {
		ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := call(c, ctx, "Park", nil)
		if err == nil {
			return fmt.Errorf("no error")
		}
		st, ok := status.FromError(err)
		if !(err == context.DeadlineExceeded || (ok && st.Code() == codes.DeadlineExceeded)) {
			return fmt.Errorf("got %v", err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			return fmt.Errorf("took %v", d)
		}
		return nil
	}())
	check("200 concurrent calls on one connection", func() error {
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				in := []byte(fmt.Sprintf("call-%d", i))
				m := "Echo"
				if i%2 == 1 {
					m = "Later"
				}
				out, err := call(c, bg, m, in)
				if err == nil && !bytes.Equal(in, out) {
					err = fmt.Errorf("call %d got %q", i, out)
				}
				if err != nil {
					errs <- err
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			return err
		}
		return nil
	}())
	check("connection still serves", func() error {
		_, err := call(c, bg, "Echo", []byte("x"))
		return err
	}())
	fmt.Printf("interop: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

func serve(addr string) int {
	os.Remove(addr)
	l, err := net.Listen("unix", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s.Register("test.Svc", map[string]ttrpc.Method{
		"Echo": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var in raw
			if err := unmarshal(&in); err != nil {
				return nil, err
			}
			return &in, nil
		},
	})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		s.Close()
	}()
	fmt.Println("ready")
	s.Serve(context.Background(), l)
	return 0
}

func bench(addr string, callers int, secs float64, size int) int {
	c := dial(addr)
	defer c.Close()
	payload := bytes.Repeat([]byte{'x'}, size)
	// warm up
	for i := 0; i < 1000; i++ {
		if _, err := call(c, context.Background(), "Echo", payload); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	end := time.Now().Add(time.Duration(secs * float64(time.Second)))
	t0 := time.Now()
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1<<16)
			for time.Now().Before(end) {
				s := time.Now()
				if _, err := call(c, context.Background(), "Echo", payload); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				local = append(local, time.Since(s))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(t0).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1000
	}
	fmt.Printf("calls=%d secs=%.3f p50_us=%.1f p99_us=%.1f\n", len(lat), el, pct(0.50), pct(0.99))
	return 0
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: ttrpc_peer interop|server|bench ADDR ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "interop":
		os.Exit(interop(os.Args[2]))
	case "server":
		os.Exit(serve(os.Args[2]))
	case "bench":
		if len(os.Args) < 6 {
			os.Exit(2)
		}
		n, _ := strconv.Atoi(os.Args[3])
		secs, _ := strconv.ParseFloat(os.Args[4], 64)
		size, _ := strconv.Atoi(os.Args[5])
		os.Exit(bench(os.Args[2], n, secs, size))
	default:
		os.Exit(2)
	}
}
