// SPDX-License-Identifier: Apache-2.0

package perftest

import "testing"

const bwOut = `---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 65536      576              0.00               17.86  		   0.000286
---------------------------------------------------------------------------------------
`

const latOut = ` #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 2       500          254.23         8173.12      422.88   	       832.93      	922.28 		5044.47 		8173.12
`

const ppOut = `  local address:  LID 0x0000, QPN 0x000011, PSN 0x824913, GID ::ffff:192.168.77.11
409600 bytes in 0.20 seconds = 16.34 Mbit/sec
50 iters in 0.20 seconds = 4010.66 usec/iter
`

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		run  func() (any, error)
		want any
	}{
		{"bw", func() (any, error) { return ParseBW(bwOut) }, BW{Bytes: 65536, Iterations: 576, PeakMBps: 0, AvgMBps: 17.86}},
		{"lat", func() (any, error) { return ParseLat(latOut) }, Lat{Bytes: 2, Iterations: 500, Min: 254.23, Max: 8173.12, Typical: 422.88, Avg: 832.93, Stdev: 922.28}},
		{"pingpong", func() (any, error) { return ParsePingpong(ppOut) }, Pingpong{Bytes: 409600, Iterations: 50, UsecPerIter: 4010.66}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.run()
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for name, out := range map[string]string{
		"empty":         "",
		"header only":   " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n",
		"error message": "Couldn't connect to 192.168.77.13:18515\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseBW(out); err == nil {
				t.Error("ParseBW accepted it")
			}
			if _, err := ParseLat(out); err == nil {
				t.Error("ParseLat accepted it")
			}
			if _, err := ParsePingpong(out); err == nil {
				t.Error("ParsePingpong accepted it")
			}
		})
	}
}

func TestCalibrationFailed(t *testing.T) {
	if !CalibrationFailed("Correlation coefficient r^2: 0.747835 < 0.9\nCan't produce a report\n") {
		t.Error("missed perftest's calibration refusal")
	}
	for _, out := range []string{bwOut, "Couldn't connect to 192.168.77.13:18515\n", "Can't produce a report\n"} {
		if CalibrationFailed(out) {
			t.Errorf("took %q for a calibration refusal", out)
		}
	}
}
