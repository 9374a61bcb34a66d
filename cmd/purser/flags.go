package main

import (
	"flag"
	"fmt"
	"strconv"
	"time"
)

// flags wraps a FlagSet whose defaults come from environment variables when they are set, so
// that every flag can be given either way and flags win.
type flags struct {
	*flag.FlagSet
	e       env
	errs    []error
	secrets []secretFlag
}

// secretFlag is filled from its environment variable after parsing, so the value never
// becomes a flag default (which -h and every flag error print).
type secretFlag struct {
	name, envVar string
	val          *string
}

func newFlags(name string, e env) *flags {
	fs := flag.NewFlagSet("purser "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return &flags{FlagSet: fs, e: e}
}

func (f *flags) usage(envVar, text string) string {
	if envVar == "" {
		return text
	}
	return text + " (env " + envVar + ")"
}

func (f *flags) String(name, envVar, def, text string) *string {
	if v := f.env(envVar); v != "" {
		def = v
	}
	return f.FlagSet.String(name, def, f.usage(envVar, text))
}

// Secret is String for credentials and URLs with passwords: the environment value is read
// after parsing instead of becoming the printed default. def must not be secret.
func (f *flags) Secret(name, envVar, def, text string) *string {
	p := f.FlagSet.String(name, def, f.usage(envVar, text))
	f.secrets = append(f.secrets, secretFlag{name: name, envVar: envVar, val: p})
	return p
}

func (f *flags) Duration(name, envVar string, def time.Duration, text string) *time.Duration {
	if v := f.env(envVar); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not a duration (e.g. 150ms, 15m)", envVar, v))
		} else {
			def = d
		}
	}
	return f.FlagSet.Duration(name, def, f.usage(envVar, text))
}

func (f *flags) Int(name, envVar string, def int, text string) *int {
	if v := f.env(envVar); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not an integer", envVar, v))
		} else {
			def = n
		}
	}
	return f.FlagSet.Int(name, def, f.usage(envVar, text))
}

func (f *flags) Bool(name, envVar string, def bool, text string) *bool {
	if v := f.env(envVar); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: not a boolean", envVar, v))
		} else {
			def = b
		}
	}
	return f.FlagSet.Bool(name, def, f.usage(envVar, text))
}

func (f *flags) env(name string) string {
	if name == "" {
		return ""
	}
	return f.e.getenv(name)
}

// Parse parses args and reports environment values that did not parse.
func (f *flags) Parse(args []string) error {
	if err := f.FlagSet.Parse(args); err != nil {
		return err
	}
	if err := f.finish(); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", f.Args())
	}
	return nil
}

// finish runs after the command line is parsed: it fills the secrets not given as flags from
// the environment and reports the first environment value that did not parse.
func (f *flags) finish() error {
	for _, sf := range f.secrets {
		if v := f.env(sf.envVar); v != "" && !f.set(sf.name) {
			*sf.val = v
		}
	}
	if len(f.errs) > 0 {
		return f.errs[0]
	}
	return nil
}

// set reports whether a flag was given on the command line.
func (f *flags) set(name string) bool {
	found := false
	f.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}
