// SPDX-License-Identifier: Apache-2.0

// Package benchplot draws the benchmarks' stacked bar charts as PNG: one
// horizontal bar per row, split into segments whose colours the legend
// names, against an axis of seconds.
package benchplot

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Row is one bar: its label and its segments' lengths (seconds), in the
// order of Chart.Segments.
type Row struct {
	Label  string
	Values []float64
}

// Chart is a stacked bar chart.
type Chart struct {
	Title    string
	Segments []string // the legend, in stacking order
	Rows     []Row
}

// palette are the segments' colours, in order (repeating).
var palette = []color.RGBA{
	{0x4e, 0x79, 0xa7, 0xff}, {0xf2, 0x8e, 0x2b, 0xff}, {0xe1, 0x57, 0x59, 0xff},
	{0x76, 0xb7, 0xb2, 0xff}, {0x59, 0xa1, 0x4f, 0xff}, {0xed, 0xc9, 0x48, 0xff},
	{0xb0, 0x7a, 0xa1, 0xff}, {0xff, 0x9d, 0xa7, 0xff}, {0x9c, 0x75, 0x5f, 0xff},
}

const (
	charW, lineH = 7, 13 // basicfont.Face7x13
	barH, gap    = 22, 10
	margin       = 12
	plotW        = 640
	legendCols   = 3
)

// WritePNG draws c to w.
func (c *Chart) WritePNG(w io.Writer) error {
	if len(c.Rows) == 0 {
		return fmt.Errorf("chart %q: no rows", c.Title)
	}
	labelW := 0
	maxSum := 0.0
	for _, r := range c.Rows {
		if len(r.Values) != len(c.Segments) {
			return fmt.Errorf("chart %q: row %q has %d values for %d segments", c.Title, r.Label, len(r.Values), len(c.Segments))
		}
		labelW = max(labelW, len(r.Label)*charW)
		sum := 0.0
		for _, v := range r.Values {
			if v < 0 || math.IsNaN(v) {
				return fmt.Errorf("chart %q: row %q has value %v", c.Title, r.Label, v)
			}
			sum += v
		}
		maxSum = max(maxSum, sum)
	}
	if maxSum == 0 {
		maxSum = 1
	}
	step := tick(maxSum)
	axisMax := math.Ceil(maxSum/step) * step
	x0 := margin + labelW + 8
	y0 := margin + 2*lineH
	plotH := len(c.Rows)*(barH+gap) + gap
	legendRows := (len(c.Segments) + legendCols - 1) / legendCols
	width := x0 + plotW + 3*margin
	height := y0 + plotH + 2*lineH + legendRows*(lineH+6) + 2*margin
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	text(img, margin, margin+lineH, c.Title)

	scale := float64(plotW) / axisMax
	grey := color.RGBA{0xcc, 0xcc, 0xcc, 0xff}
	for v := 0.0; v <= axisMax+step/2; v += step {
		x := x0 + int(v*scale)
		fill(img, x, y0, x+1, y0+plotH, grey)
		l := fmt.Sprintf("%g s", v)
		text(img, x-len(l)*charW/2, y0+plotH+lineH+2, l)
	}
	for i, r := range c.Rows {
		y := y0 + gap + i*(barH+gap)
		text(img, margin+labelW-len(r.Label)*charW, y+barH/2+lineH/2-2, r.Label)
		x := float64(x0)
		for j, v := range r.Values {
			nx := x + v*scale
			fill(img, int(x), y, int(math.Round(nx)), y+barH, palette[j%len(palette)])
			x = nx
		}
	}
	ly := y0 + plotH + 2*lineH + 6
	colW := (width - 2*margin) / legendCols
	for j, s := range c.Segments {
		lx := margin + (j%legendCols)*colW
		yy := ly + (j/legendCols)*(lineH+6)
		fill(img, lx, yy, lx+12, yy+12, palette[j%len(palette)])
		text(img, lx+16, yy+11, s)
	}
	return png.Encode(w, img)
}

// tick is a round step for an axis up to max: 1, 2 or 5 times a power
// of ten, about five of them.
func tick(max float64) float64 {
	raw := max / 5
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fill(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), &image.Uniform{c}, image.Point{}, draw.Src)
}

func text(img *image.RGBA, x, y int, s string) {
	d := &font.Drawer{Dst: img, Src: image.Black, Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
