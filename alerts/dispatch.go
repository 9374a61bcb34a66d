package alerts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/purser-dev/purser/budget"
)

// Delivery outcomes (the outcome attribute of purser.alerts.deliveries).
const (
	outcomeDelivered = "delivered"
	outcomeRetry     = "retry"
	outcomeFailed    = "failed"
)

// DispatchOnce claims one batch of due deliveries, POSTs them (Config.Concurrency at a time)
// and records each outcome. It returns how many it claimed; 0 once Drain was called.
func (a *Alerts) DispatchOnce(ctx context.Context) (int, error) {
	if len(a.ids) == 0 || !a.begin() {
		return 0, nil
	}
	defer a.inflight.Done()
	now := a.cfg.Now()
	ds, err := a.svc.ClaimAlertDeliveries(ctx, a.ids, now, now.Add(a.lease()), a.cfg.BatchSize)
	if err != nil {
		return 0, fmt.Errorf("claim alert deliveries: %w", err)
	}
	sem := make(chan struct{}, a.cfg.Concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, d := range ds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := a.deliver(ctx, d); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return len(ds), errors.Join(errs...)
}

// lease is how long a claimed batch is ours: every POST of the batch, queued behind the
// concurrency limit, plus a margin for recording the outcomes.
func (a *Alerts) lease() time.Duration {
	rounds := (a.cfg.BatchSize + a.cfg.Concurrency - 1) / a.cfg.Concurrency
	return time.Duration(rounds)*a.cfg.Timeout + 30*time.Second
}

// deliver POSTs one claimed delivery and records the outcome. The outcome is written on a
// context that survives shutdown, so an answer received is never forgotten.
func (a *Alerts) deliver(ctx context.Context, d budget.AlertDelivery) error {
	hook, ok := a.hooks[d.Webhook]
	if !ok { // cannot happen: only our webhooks are claimed
		return fmt.Errorf("delivery %d for unknown webhook %q", d.EventID, d.Webhook)
	}
	status, sendErr := a.post(ctx, hook, d)
	rec, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	attrs := []slog.Attr{slog.String("event_id", d.IdempotencyKey), slog.String("webhook", d.Webhook), slog.Int("attempt", d.Attempt)}
	var state, outcome, lastErr string
	var at time.Time
	now := a.cfg.Now()
	switch {
	case sendErr == nil:
		state, outcome, at = budget.DeliveryDelivered, outcomeDelivered, now
		a.log.LogAttrs(ctx, slog.LevelDebug, "alert delivered", append(attrs, slog.Int("status", status))...)
	case d.Attempt >= a.cfg.MaxAttempts:
		state, outcome, at, lastErr = budget.DeliveryFailed, outcomeFailed, now, sendErr.Error()
		a.log.LogAttrs(ctx, slog.LevelError, "alert delivery failed for good", append(attrs, slog.String("error", lastErr))...)
	default:
		next := now.Add(a.backoff(d.Attempt))
		state, outcome, at, lastErr = budget.DeliveryPending, outcomeRetry, next, sendErr.Error()
		a.log.LogAttrs(ctx, slog.LevelWarn, "alert delivery failed; will retry",
			append(attrs, slog.String("error", lastErr), slog.Time("next_attempt_at", next))...)
	}
	a.m.delivery(ctx, outcome)
	if _, err := a.svc.FinishAlertDelivery(rec, d, state, at, lastErr); err != nil {
		return fmt.Errorf("record delivery %s to %s: %w", d.IdempotencyKey, d.Webhook, err)
	}
	return nil
}

// backoff is the delay after the attempt-th failure: base·2^(attempt-1) capped at max, half of
// it fixed and half random, so that a fleet of retries spreads out.
func (a *Alerts) backoff(attempt int) time.Duration {
	d := a.cfg.BackoffMax
	if attempt < 40 {
		if e := a.cfg.BackoffBase << (attempt - 1); e > 0 && e < d {
			d = e
		}
	}
	return d/2 + time.Duration(a.cfg.Rand()*float64(d/2))
}

func (a *Alerts) post(ctx context.Context, hook Webhook, d budget.AlertDelivery) (int, error) {
	body, err := render(hook, d.Payload)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook.URL, bytes.NewReader(body))
	if err != nil {
		return 0, errors.New("cannot build the request") // the error would quote the URL
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "purser-alerts/1")
	req.Header.Set("Idempotency-Key", d.IdempotencyKey)
	req.Header.Set("X-Purser-Event", d.Kind)
	req.Header.Set("X-Purser-Delivery-Attempt", strconv.Itoa(d.Attempt))
	if hook.Secret != "" {
		req.Header.Set("X-Purser-Signature", Sign(hook.Secret, a.cfg.Now(), body))
	}
	res, err := a.cfg.Client.Do(req)
	if err != nil {
		return 0, redact(err)
	}
	defer res.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10)) // let the connection be reused
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return res.StatusCode, fmt.Errorf("HTTP %d: %s", res.StatusCode, printable(snippet, 200))
	}
	return res.StatusCode, nil
}

// Sign returns the X-Purser-Signature value for body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>". A receiver recomputes it and
// rejects stale timestamps.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// redact drops the URL from a transport error (webhook URLs can be secrets).
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if errors.Is(ue.Err, context.DeadlineExceeded) || ue.Timeout() {
			return errors.New("timed out")
		}
		return fmt.Errorf("%s: %s", strings.ToLower(ue.Op), ue.Err.Error())
	}
	return err
}

func printable(b []byte, n int) string {
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) > n {
		s = string([]rune(s)[:n]) + "…"
	}
	return s
}

type instruments struct {
	events     metric.Int64Counter
	deliveries metric.Int64Counter
}

func newInstruments(m metric.Meter) (instruments, error) {
	var in instruments
	var err error
	if in.events, err = m.Int64Counter("purser.alerts.events",
		metric.WithDescription("Budget alert events created, by kind (threshold, projected) and whether they were suppressed")); err != nil {
		return in, fmt.Errorf("metric purser.alerts.events: %w", err)
	}
	if in.deliveries, err = m.Int64Counter("purser.alerts.deliveries",
		metric.WithDescription("Alert webhook delivery attempts by outcome (delivered, retry, failed)")); err != nil {
		return in, fmt.Errorf("metric purser.alerts.deliveries: %w", err)
	}
	return in, nil
}

func (in instruments) event(ctx context.Context, kind string, suppressed bool) {
	in.events.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind), attribute.Bool("suppressed", suppressed)))
}

func (in instruments) delivery(ctx context.Context, outcome string) {
	in.deliveries.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", outcome)))
}
