// SPDX-License-Identifier: Apache-2.0

package benchplot

import (
	"bytes"
	"image/png"
	"strings"
	"testing"
)

// A chart draws as a PNG whose bars take the segments' colours; bad
// rows are refused.
func TestWritePNG(t *testing.T) {
	c := &Chart{Title: "blackout", Segments: []string{"freeze", "dump", "transfer"},
		Rows: []Row{{"RDMA", []float64{0.5, 3, 2}}, {"no RDMA", []float64{0.5, 2.5, 2}}}}
	var buf bytes.Buffer
	if err := c.WritePNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bb, _ := img.At(x, y).RGBA()
			seen[[3]uint32{r >> 8, g >> 8, bb >> 8}] = true
		}
	}
	for i := range c.Segments {
		p := palette[i]
		if !seen[[3]uint32{uint32(p.R), uint32(p.G), uint32(p.B)}] {
			t.Errorf("segment %d's colour %v not drawn", i, p)
		}
	}

	for _, tc := range []struct {
		name  string
		chart Chart
		want  string
	}{
		{"no rows", Chart{Title: "x", Segments: []string{"a"}}, "no rows"},
		{"values short", Chart{Title: "x", Segments: []string{"a", "b"}, Rows: []Row{{"r", []float64{1}}}}, "1 values for 2"},
		{"negative", Chart{Title: "x", Segments: []string{"a"}, Rows: []Row{{"r", []float64{-1}}}}, "value -1"},
	} {
		if err := tc.chart.WritePNG(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestTick(t *testing.T) {
	for _, tc := range []struct{ max, want float64 }{{10, 2}, {23, 5}, {0.9, 0.2}, {60, 20}, {5, 1}} {
		if got := tick(tc.max); got != tc.want {
			t.Errorf("tick(%v) = %v, want %v", tc.max, got, tc.want)
		}
	}
}
