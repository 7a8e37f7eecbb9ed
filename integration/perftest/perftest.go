// SPDX-License-Identifier: Apache-2.0

// Package perftest reads the results that perftest (ib_*_bw, ib_*_lat) and
// the libibverbs ibv_*_pingpong examples print.
package perftest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// BW is one result row of an ib_*_bw test.
type BW struct {
	Bytes, Iterations int
	PeakMBps, AvgMBps float64
}

// Lat is one result row of an ib_*_lat test, in microseconds.
type Lat struct {
	Bytes, Iterations int
	Min, Max, Typical float64
	Avg, Stdev        float64
}

// Pingpong is the summary of an ibv_*_pingpong run.
type Pingpong struct {
	Bytes, Iterations int
	UsecPerIter       float64
}

var errNoRow = errors.New("perftest: no result row in output")

// row finds the first numeric row after the header line containing marker.
func row(out, marker string, min int) ([]string, error) {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if !strings.Contains(l, "#bytes") || !strings.Contains(l, marker) {
			continue
		}
		for _, r := range lines[i+1:] {
			f := strings.Fields(r)
			if len(f) >= min {
				if _, err := strconv.Atoi(f[0]); err == nil {
					return f, nil
				}
			}
		}
	}
	return nil, errNoRow
}

func floats(f []string, idx ...int) ([]float64, error) {
	var v []float64
	for _, i := range idx {
		x, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return nil, fmt.Errorf("perftest: column %d: %w", i, err)
		}
		v = append(v, x)
	}
	return v, nil
}

// ParseBW reads the result of ib_send_bw, ib_write_bw, ib_read_bw or
// ib_atomic_bw.
func ParseBW(out string) (BW, error) {
	f, err := row(out, "BW average", 4)
	if err != nil {
		return BW{}, err
	}
	v, err := floats(f, 0, 1, 2, 3)
	if err != nil {
		return BW{}, err
	}
	return BW{Bytes: int(v[0]), Iterations: int(v[1]), PeakMBps: v[2], AvgMBps: v[3]}, nil
}

// ParseLat reads the result of ib_send_lat, ib_write_lat or ib_read_lat.
func ParseLat(out string) (Lat, error) {
	f, err := row(out, "t_typical", 7)
	if err != nil {
		return Lat{}, err
	}
	v, err := floats(f, 0, 1, 2, 3, 4, 5, 6)
	if err != nil {
		return Lat{}, err
	}
	return Lat{Bytes: int(v[0]), Iterations: int(v[1]), Min: v[2], Max: v[3], Typical: v[4], Avg: v[5], Stdev: v[6]}, nil
}

// ParsePingpong reads the summary lines of ibv_rc_pingpong and its kin:
//
//	409600 bytes in 0.20 seconds = 16.34 Mbit/sec
//	50 iters in 0.20 seconds = 4010.66 usec/iter
func ParsePingpong(out string) (Pingpong, error) {
	var p Pingpong
	var haveBytes, haveIters bool
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 7 && f[1] == "bytes" && f[2] == "in":
			n, err := strconv.Atoi(f[0])
			if err != nil {
				return p, fmt.Errorf("perftest: bytes: %w", err)
			}
			p.Bytes, haveBytes = n, true
		case len(f) >= 7 && f[1] == "iters" && f[2] == "in" && f[7] == "usec/iter":
			n, err := strconv.Atoi(f[0])
			if err != nil {
				return p, fmt.Errorf("perftest: iters: %w", err)
			}
			u, err := strconv.ParseFloat(f[6], 64)
			if err != nil {
				return p, fmt.Errorf("perftest: usec/iter: %w", err)
			}
			p.Iterations, p.UsecPerIter, haveIters = n, u, true
		}
	}
	if !haveBytes || !haveIters {
		return p, errNoRow
	}
	return p, nil
}

// CalibrationFailed reports whether perftest refused to report because it
// could not calibrate its cycle counter ("Correlation coefficient r^2: ...
// < 0.9", "Can't produce a report"). It happens under emulation, where the
// guest's TSC is unstable; the measurement is void, not failed, and can be
// run again.
func CalibrationFailed(out string) bool {
	return strings.Contains(out, "Correlation coefficient r^2") && strings.Contains(out, "Can't produce a report")
}
