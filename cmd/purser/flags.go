package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// flags wraps a FlagSet whose defaults come from environment variables when they are set, so
// that every flag can be given either way and flags win.
type flags struct {
	*flag.FlagSet
	e       env
	errs    []error
	secrets []secretFlag
	// synopsis follows the command's name in its usage line: the positional arguments and
	// the notable flags ("KEY_ID", "-f FILE [-dry-run]").
	synopsis string
}

// secretFlag is filled from its environment variable after parsing, so the value never
// becomes a flag default (which -h and every flag error print).
type secretFlag struct {
	name, envVar string
	val          *string
}

func newFlags(name string, e env) *flags {
	fs := flag.NewFlagSet("purser "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr) // the flag package's own messages ("flag provided but not defined")
	fs.Usage = func() {}   // printUsage prints it, on stdout or stderr as the case may be
	return &flags{FlagSet: fs, e: e, synopsis: "[flags]"}
}

// printUsage writes the command's usage line, summary and flags.
func (f *flags) printUsage(w io.Writer) {
	name := strings.TrimPrefix(f.Name(), "purser ")
	fmt.Fprintf(w, "usage: purser %s %s\n", name, f.synopsis)
	if s := summaryOf(name); s != "" {
		fmt.Fprintf(w, "\n%s\n", s)
	}
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "\nflags:\n")
	out := f.Output()
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(out)
}

// parseFlags parses the command line: -h prints the usage on stdout and returns
// flag.ErrHelp (exit 0); a flag error (already printed by the flag package) prints the usage
// on stderr and exits 2.
func (f *flags) parseFlags(args []string) error {
	err := f.FlagSet.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		f.printUsage(f.e.stdout)
		return flag.ErrHelp
	}
	f.printUsage(f.e.stderr)
	return exitError{code: 2}
}

// misuse prints the usage on stderr and exits 2 with msg.
func (f *flags) misuse(msg string) error {
	f.printUsage(f.e.stderr)
	return exitError{code: 2, msg: strings.TrimPrefix(f.Name(), "purser ") + ": " + msg}
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

// Parse parses args (flags only: a positional argument is misuse) and reports environment
// values that did not parse.
func (f *flags) Parse(args []string) error {
	if err := f.parseFlags(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return f.misuse(fmt.Sprintf("takes no arguments, got %q", strings.Join(f.Args(), " ")))
	}
	return f.finish()
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
