// Package cnilog gives a plugin structured logs (log/slog) in the file the
// operator names with "logFile", and nowhere else: stdout carries the
// result, and a runtime may show stderr to users. Off by default.
package cnilog

import (
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// Config is the pair of keys every plugin of ours accepts.
type Config struct {
	LogFile  string `json:"logFile"`
	LogLevel string `json:"logLevel"`
}

// Validate checks logLevel.
func (c Config) Validate() error {
	if _, ok := levels[strings.ToLower(c.LogLevel)]; !ok {
		return cnierr.InvalidConfig("logLevel", c.LogLevel, "must be debug, info, warn or error")
	}
	return nil
}

var levels = map[string]slog.Level{
	"": slog.LevelInfo, "debug": slog.LevelDebug, "info": slog.LevelInfo,
	"warn": slog.LevelWarn, "warning": slog.LevelWarn, "error": slog.LevelError,
}

// Open returns a logger writing to c.LogFile (appending) with the given
// attributes on every line (network, container ID, verb), and a function
// to close it. Without a file, or when the file cannot be opened (logging
// must never fail a pod), the logger discards everything.
func (c Config) Open(attrs ...any) (*slog.Logger, func()) {
	if c.LogFile == "" {
		return discard, func() {}
	}
	f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return discard, func() {}
	}
	h := slog.NewTextHandler(f, &slog.HandlerOptions{Level: levels[strings.ToLower(c.LogLevel)]})
	return slog.New(h).With(attrs...), func() { f.Close() }
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))
