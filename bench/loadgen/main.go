// loadgen: the parts of the RelayAPI benchmark that wrk cannot do honestly.
//
//	stream  closed loop of SSE requests: time to first body byte and total time
//	open    open loop at a fixed rate; latency measured from the *intended*
//	        send time, so a stalled target cannot hide its queueing
//	        (no coordinated omission, like wrk2 / oha -q)
//	hold    open N streams, report when all delivered their first byte, keep
//	        them open until stdin says "close" (memory per idle stream)
//	upload  N concurrent uploads of S bytes each, generated on the fly
//
// Standard library only, so it builds offline. Results: one JSON line on stdout.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ",") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

var (
	url      = flag.String("url", "", "target URL")
	method   = flag.String("method", "POST", "HTTP method")
	body     = flag.String("body", "", "request body")
	conc     = flag.Int("c", 64, "concurrency (stream), streams (hold), uploads (upload)")
	dur      = flag.Duration("d", 5*time.Second, "duration (stream, open)")
	rate     = flag.Float64("rate", 1000, "requests per second (open)")
	size     = flag.Int64("size", 10<<20, "bytes per upload (upload)")
	warm     = flag.Duration("warmup", 500*time.Millisecond, "warm-up before measuring (stream, open)")
	timeout  = flag.Duration("timeout", 30*time.Second, "per-request timeout")
	hdrs     headers
	client   *http.Client
	bodyData []byte
)

func main() {
	flag.Var(&hdrs, "H", "header 'Name: value' (repeatable)")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen stream|open|hold|upload -url U [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	_ = flag.CommandLine.Parse(os.Args[2:])
	bodyData = []byte(*body)
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 10000,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	client = &http.Client{Transport: tr}
	var out any
	switch mode {
	case "stream":
		out = runStream()
	case "open":
		out = runOpen()
	case "hold":
		out = runHold()
	case "upload":
		out = runUpload()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func newReq(ctx context.Context, r io.Reader) *http.Request {
	req, err := http.NewRequestWithContext(ctx, *method, *url, r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, h := range hdrs {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return req
}

// one request; ttfb = first body byte; ok = 2xx and body read to the end.
func do(ctx context.Context) (ttfb, total time.Duration, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	resp, err := client.Do(newReq(ctx, bytes.NewReader(bodyData)))
	if err != nil {
		return 0, 0, false
	}
	defer resp.Body.Close()
	buf := make([]byte, 32<<10)
	n, err := resp.Body.Read(buf)
	for n == 0 && err == nil {
		n, err = resp.Body.Read(buf)
	}
	ttfb = time.Since(start)
	if err == nil {
		_, err = io.CopyBuffer(io.Discard, resp.Body, buf)
	}
	if err == io.EOF {
		err = nil
	}
	total = time.Since(start)
	return ttfb, total, err == nil && resp.StatusCode/100 == 2
}

func pct(s []time.Duration, p float64) float64 {
	if len(s) == 0 {
		return -1
	}
	i := int(p / 100 * float64(len(s)))
	if i >= len(s) {
		i = len(s) - 1
	}
	return float64(s[i].Microseconds())
}

func sorted(s []time.Duration) []time.Duration {
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func runStream() map[string]any {
	var mu sync.Mutex
	var ttfbs, totals []time.Duration
	var errs, okN int64
	measureFrom := time.Now().Add(*warm)
	end := measureFrom.Add(*dur)
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				st := time.Now()
				t, tot, ok := do(context.Background())
				if st.Before(measureFrom) {
					continue
				}
				if !ok {
					atomic.AddInt64(&errs, 1)
					continue
				}
				atomic.AddInt64(&okN, 1)
				mu.Lock()
				ttfbs = append(ttfbs, t)
				totals = append(totals, tot)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sorted(ttfbs)
	sorted(totals)
	return map[string]any{
		"requests": okN, "errors": errs, "rps": float64(okN) / dur.Seconds(),
		"ttfb_p50_us": pct(ttfbs, 50), "ttfb_p99_us": pct(ttfbs, 99),
		"total_p50_us": pct(totals, 50), "total_p99_us": pct(totals, 99),
	}
}

func runOpen() map[string]any {
	interval := time.Duration(float64(time.Second) / *rate)
	total := int((*warm + *dur).Seconds() * *rate)
	warmN := int(warm.Seconds() * *rate)
	lat := make([]time.Duration, total)
	// how late each request started: the generator's own precision
	lag := make([]time.Duration, total)
	okv := make([]bool, total)
	var wg sync.WaitGroup
	sleep := preciseSleeper()
	start := time.Now()
	for i := 0; i < total; {
		now := time.Now()
		// fire every request whose intended time has come
		for ; i < total; i++ {
			intended := start.Add(time.Duration(i) * interval)
			if intended.After(now) {
				break
			}
			wg.Add(1)
			go func(i int, intended time.Time) {
				defer wg.Done()
				lag[i] = time.Since(intended)
				_, _, ok := do(context.Background())
				lat[i] = time.Since(intended)
				okv[i] = ok
			}(i, intended)
		}
		if i < total {
			sleep(time.Until(start.Add(time.Duration(i) * interval)))
		}
	}
	wg.Wait()
	var ls []time.Duration
	var errs int
	for i := warmN; i < total; i++ {
		if okv[i] {
			ls = append(ls, lat[i])
		} else {
			errs++
		}
	}
	sorted(ls)
	lags := sorted(append([]time.Duration(nil), lag[warmN:]...))
	return map[string]any{
		"requests": len(ls), "errors": errs, "rate": *rate,
		"send_lag_p50_us": pct(lags, 50), "send_lag_p99_us": pct(lags, 99),
		"achieved_rps": float64(total) / time.Since(start).Seconds(),
		"p50_us":       pct(ls, 50), "p99_us": pct(ls, 99), "p999_us": pct(ls, 99.9),
		"max_us": pct(ls, 100),
	}
}

func runHold() map[string]any {
	ctx, cancel := context.WithCancel(context.Background())
	var ready, failed int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256) // bounded connection ramp
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			req := newReq(ctx, bytes.NewReader(bodyData))
			resp, err := client.Do(req)
			if err != nil {
				<-sem
				atomic.AddInt64(&failed, 1)
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, 4096)
			n, err := resp.Body.Read(buf)
			<-sem
			if n == 0 || resp.StatusCode/100 != 2 {
				atomic.AddInt64(&failed, 1)
				return
			}
			atomic.AddInt64(&ready, 1)
			for err == nil {
				_, err = resp.Body.Read(buf)
			}
		}()
	}
	// wait until every stream is ready or failed
	deadline := time.Now().Add(*timeout)
	for atomic.LoadInt64(&ready)+atomic.LoadInt64(&failed) < int64(*conc) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("ready %d failed %d\n", atomic.LoadInt64(&ready), atomic.LoadInt64(&failed))
	os.Stdout.Sync()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "close" {
			break
		}
	}
	cancel()
	wg.Wait()
	client.CloseIdleConnections()
	return map[string]any{"streams": *conc, "ready": ready, "failed": failed}
}

type genReader struct{ left int64 }

var chunk = bytes.Repeat([]byte("relayapi-upload-"), 4096) // 64 KiB

func (g *genReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := copy(p, chunk)
	if int64(n) > g.left {
		n = int(g.left)
	}
	g.left -= int64(n)
	return n, nil
}

func runUpload() map[string]any {
	var okN, errs, bytesUp int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			req := newReq(ctx, &genReader{left: *size})
			req.ContentLength = *size
			resp, err := client.Do(req)
			if err != nil {
				atomic.AddInt64(&errs, 1)
				return
			}
			defer resp.Body.Close()
			var r struct {
				Bytes int64 `json:"bytes"`
			}
			if json.NewDecoder(resp.Body).Decode(&r) != nil || resp.StatusCode/100 != 2 || r.Bytes != *size {
				atomic.AddInt64(&errs, 1)
				return
			}
			atomic.AddInt64(&okN, 1)
			atomic.AddInt64(&bytesUp, r.Bytes)
		}()
	}
	wg.Wait()
	return map[string]any{"ok": okN, "errors": errs, "bytes": bytesUp, "seconds": time.Since(start).Seconds()}
}
