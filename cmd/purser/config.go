package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/extauthz/request"
)

// fileConfig is the optional configuration file (-config / PURSER_CONFIG), decoded strictly:
// an unknown or misspelt field is an error. Every field is optional.
type fileConfig struct {
	Identity struct {
		CredentialSources []string                `json:"credential_sources,omitempty"`
		StripCredentials  *bool                   `json:"strip_credentials,omitempty"`
		DefaultSubject    string                  `json:"default_subject,omitempty"`
		JWT               request.JWTConfig       `json:"jwt,omitempty"`
		TrustedHeaders    []request.HeaderMapping `json:"trusted_headers,omitempty"`
		ModelHeader       string                  `json:"model_header,omitempty"`
		ImageTokens       int64                   `json:"image_tokens,omitempty"`
	} `json:"identity,omitempty"`
	Policies struct {
		UnknownModel     string `json:"unknown_model,omitempty"`
		MissingCap       string `json:"missing_output_cap,omitempty"`
		DefaultOutputCap int64  `json:"default_output_cap,omitempty"`
		ExternalInput    *int64 `json:"external_input_tokens,omitempty"`
		StreamNoUsage    string `json:"stream_without_usage,omitempty"`
		TruncatedBody    string `json:"truncated_body,omitempty"`
		InvalidBody      string `json:"invalid_body,omitempty"`
		Unpriced         string `json:"unpriced_endpoint,omitempty"`
	} `json:"policies,omitempty"`
	Responses struct {
		BudgetHeaders *bool `json:"budget_headers,omitempty"`
		ShowAmounts   bool  `json:"show_amounts,omitempty"`
	} `json:"responses,omitempty"`
	Usage struct {
		Namespaces          []string          `json:"namespaces,omitempty"`
		AIGatewayNamespace  string            `json:"ai_gateway_namespace,omitempty"`
		TokenUsageNamespace string            `json:"token_usage_namespace,omitempty"`
		Headers             map[string]string `json:"headers,omitempty"`
		ProviderError       string            `json:"provider_error,omitempty"`
		UnknownModel        string            `json:"unknown_model,omitempty"`
		QueueSize           int               `json:"queue_size,omitempty"`
		BatchSize           int               `json:"batch_size,omitempty"`
		Workers             int               `json:"workers,omitempty"`
	} `json:"usage,omitempty"`
	Ledger struct {
		MaxBatch int `json:"max_batch,omitempty"`
		Lanes    int `json:"lanes,omitempty"`
	} `json:"ledger,omitempty"`
}

// loadFileConfig reads and strictly decodes the configuration file ("" = defaults).
func loadFileConfig(path string) (fileConfig, error) {
	var fc fileConfig
	if path == "" {
		return fc, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fc, fmt.Errorf("config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &fc); err != nil {
		return fc, fmt.Errorf("config %s: %w", path, err)
	}
	return fc, nil
}

// extauthzConfig maps the file (and flags) onto the ext_authz server's Config.
func (fc fileConfig) extauthzConfig(checkTimeout, ttl time.Duration) extauthz.Config {
	id := fc.Identity
	return extauthz.Config{
		Request: request.Config{
			CredentialSources: id.CredentialSources, JWT: id.JWT, TrustedHeaders: id.TrustedHeaders,
			ModelHeader: id.ModelHeader, ImageTokens: id.ImageTokens,
		},
		CheckTimeout:        checkTimeout,
		StripCredentials:    id.StripCredentials,
		DefaultSubject:      id.DefaultSubject,
		UnknownModel:        fc.Policies.UnknownModel,
		MissingCap:          fc.Policies.MissingCap,
		DefaultOutputCap:    fc.Policies.DefaultOutputCap,
		ExternalInputTokens: fc.Policies.ExternalInput,
		StreamWithoutUsage:  fc.Policies.StreamNoUsage,
		TruncatedBody:       fc.Policies.TruncatedBody,
		InvalidBody:         fc.Policies.InvalidBody,
		Unpriced:            fc.Policies.Unpriced,
		BudgetHeaders:       fc.Responses.BudgetHeaders,
		ShowAmounts:         fc.Responses.ShowAmounts,
		ReservationTTL:      ttl,
	}
}

// accesslogConfig maps the file onto the sink's Config.
func (fc fileConfig) accesslogConfig() accesslog.Config {
	u := fc.Usage
	return accesslog.Config{
		Extract: accesslog.ExtractConfig{
			UsageNamespaces: u.Namespaces, AIGatewayNamespace: u.AIGatewayNamespace,
			TokenUsageNamespace: u.TokenUsageNamespace, UsageHeaders: u.Headers,
		},
		QueueSize: u.QueueSize, BatchSize: u.BatchSize, Workers: u.Workers,
		ProviderError: u.ProviderError, UnknownModel: u.UnknownModel,
	}
}

// validate checks everything the file configures.
func (fc fileConfig) validate() error {
	var errs []error
	if err := fc.extauthzConfig(0, 0).Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := fc.accesslogConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	if fc.Ledger.MaxBatch < 0 || fc.Ledger.MaxBatch > 8192 {
		errs = append(errs, fmt.Errorf("ledger.max_batch: %d: want 1-8192", fc.Ledger.MaxBatch))
	}
	if fc.Ledger.Lanes < 0 || fc.Ledger.Lanes > 64 {
		errs = append(errs, fmt.Errorf("ledger.lanes: %d: want 1-64", fc.Ledger.Lanes))
	}
	if fc.Usage.QueueSize < 0 || fc.Usage.BatchSize < 0 || fc.Usage.Workers < 0 {
		errs = append(errs, fmt.Errorf("usage: queue_size, batch_size and workers must not be negative"))
	}
	return errors.Join(errs...)
}

// runCheckConfig validates a configuration file and a price override file offline.
func runCheckConfig(_ context.Context, e env, args []string) error {
	f := newFlags("check-config", e)
	cfgFile := f.String("config", "PURSER_CONFIG", "", "configuration file to check")
	prices := f.String("prices", "PURSER_PRICES", "", "price override file to check")
	if err := f.Parse(args); err != nil {
		return err
	}
	fc, err := loadFileConfig(*cfgFile)
	if err != nil {
		return err
	}
	if err := fc.validate(); err != nil {
		return fmt.Errorf("config %s: %w", *cfgFile, err)
	}
	cat, err := loadCatalog(*prices)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "configuration is valid; price catalog %s\n", cat.Version())
	return nil
}
