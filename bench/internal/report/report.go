// Package report turns the start-up benchmark's samples into a Markdown
// table and a PNG bar chart.
package report

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Row is one image in one form, with a sample per run.
type Row struct {
	Image string
	Form  string
	// Ready is the time until the workload's readiness line, per run.
	Ready []time.Duration
	// Build is the wall time of the whole cold build, per run.
	Build []time.Duration
	// ReadyBytes is what the registry served until ready, per run.
	ReadyBytes []int64
	// Bytes and Requests are what the registry served during the whole
	// build, per run.
	Bytes    []int64
	Requests []int
	// ImageBytes is the compressed size of the form's layers.
	ImageBytes int64
	// Resolve, Pull and Run split Ready, per run where the progress told
	// it: until the image's metadata is resolved, the FROM step (pulling,
	// or for lazy forms mounting), and from there until ready (the RUN
	// step's container setup, lazy fetches and the workload's start).
	Resolve, Pull, Run []time.Duration
	// Err is set when a run failed; the samples are then those that did not.
	Err string
}

// Limit is an image's physical start-up limit on the link: the bytes its
// workload reads over the bandwidth, plus the round trips it cannot avoid
// times the latency.
type Limit struct {
	Image      string
	ReadBytes  int64
	ReadFiles  int
	RoundTrips int
	Time       time.Duration
}

// Median is the middle sample (the mean of the two middle ones for an even
// count); zero for none.
func Median[T time.Duration | int64 | int](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// P95 is the nearest-rank 95th percentile; with fewer than 20 samples it is
// the largest.
func P95[T time.Duration | int64 | int](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(math.Ceil(0.95*float64(len(s))))-1]
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
func mb(n int64) string           { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// Markdown writes the table: a row per image and form, with medians and
// p95 over the runs, the readiness time net of noop (the median cold build
// of a near-empty image, the fixed cost of any build; zero when not
// measured), the speed-up over the baseline form and the ratio to the
// image's physical limit; then the limits.
func Markdown(w io.Writer, rows []Row, limits []Limit, baseline string, noop time.Duration) error {
	var b strings.Builder
	b.WriteString("| image | form | ready median | ready p95 | ready − no-op | build median | build p95 | registry until ready | registry whole build | requests | image size | vs " + baseline + " | vs limit |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	base := map[string]time.Duration{}
	for _, r := range rows {
		if r.Form == baseline {
			base[r.Image] = Median(r.Ready)
		}
	}
	lim := map[string]Limit{}
	for _, l := range limits {
		lim[l.Image] = l
	}
	for _, r := range rows {
		if len(r.Ready) == 0 {
			fmt.Fprintf(&b, "| %s | %s | failed: %s | | | | | | | | | | |\n", r.Image, r.Form, strings.ReplaceAll(r.Err, "|", "/"))
			continue
		}
		m := Median(r.Ready)
		speed, vsLimit := "", ""
		if bm := base[r.Image]; bm > 0 {
			speed = fmt.Sprintf("%.2f×", bm.Seconds()/m.Seconds())
		}
		if l, ok := lim[r.Image]; ok && l.Time > 0 {
			vsLimit = fmt.Sprintf("%.1f×", m.Seconds()/l.Time.Seconds())
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s |\n",
			r.Image, r.Form, secs(m), secs(P95(r.Ready)), secs(m-noop), secs(Median(r.Build)), secs(P95(r.Build)),
			mb(Median(r.ReadyBytes)), mb(Median(r.Bytes)), Median(r.Requests), mb(r.ImageBytes), speed, vsLimit)
	}
	if slices.ContainsFunc(rows, func(r Row) bool { return len(r.Run) > 0 }) {
		b.WriteString("\nWhere the time until ready goes (medians): *resolve*, until the image's metadata is resolved; *pull*, the FROM step (legacy downloads and unpacks, the lazy forms mount); *run*, from there until the readiness line (the RUN container's setup, the lazy forms' fetches, the workload's start).\n\n")
		b.WriteString("| image | form | resolve | pull | run | ready |\n| --- | --- | ---: | ---: | ---: | ---: |\n")
		for _, r := range rows {
			if len(r.Run) > 0 {
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.Image, r.Form, secs(Median(r.Resolve)), secs(Median(r.Pull)), secs(Median(r.Run)), secs(Median(r.Ready)))
			}
		}
	}
	if len(limits) > 0 {
		b.WriteString("\n| image | files read | bytes read | round trips | physical limit |\n| --- | ---: | ---: | ---: | ---: |\n")
		for _, l := range limits {
			fmt.Fprintf(&b, "| %s | %d | %s | %d | %s |\n", l.Image, l.ReadFiles, mb(l.ReadBytes), l.RoundTrips, secs(l.Time))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Targets writes, per image, how the optimized forms compare with the
// baseline form, with the plain eStargz form and with the bytes the
// workload reads, against the figures asked of them.
func Targets(w io.Writer, rows []Row, limits []Limit, baseline, plain string, noop time.Duration) error {
	var b strings.Builder
	b.WriteString("| image | form | speed-up vs " + baseline + " (≥ 8×) | net of no-op | ready vs " + plain + " (≤ 0.45×) | registry bytes vs bytes read (≤ 1.3×) |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: |\n")
	find := func(image, form string) (Row, bool) {
		i := slices.IndexFunc(rows, func(r Row) bool { return r.Image == image && r.Form == form && len(r.Ready) > 0 })
		if i < 0 {
			return Row{}, false
		}
		return rows[i], true
	}
	for _, l := range limits {
		base, okBase := find(l.Image, baseline)
		pl, okPlain := find(l.Image, plain)
		for _, r := range rows {
			if r.Image != l.Image || r.Form == baseline || r.Form == plain || len(r.Ready) == 0 {
				continue
			}
			m := Median(r.Ready)
			speed, net, vsPlain, bytesRatio := "", "", "", ""
			if okBase {
				speed = fmt.Sprintf("%.2f×", Median(base.Ready).Seconds()/m.Seconds())
				if noop > 0 && m > noop {
					net = fmt.Sprintf("%.2f×", (Median(base.Ready)-noop).Seconds()/(m-noop).Seconds())
				}
			}
			if okPlain {
				vsPlain = fmt.Sprintf("%.2f×", m.Seconds()/Median(pl.Ready).Seconds())
			}
			if l.ReadBytes > 0 {
				bytesRatio = fmt.Sprintf("%.2f×", float64(Median(r.ReadyBytes))/float64(l.ReadBytes))
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.Image, r.Form, speed, net, vsPlain, bytesRatio)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

var palette = []color.RGBA{
	{0x9e, 0x9e, 0x9e, 0xff}, // grey: the baseline
	{0x42, 0x85, 0xf4, 0xff},
	{0x0f, 0x9d, 0x58, 0xff},
	{0xf4, 0xb4, 0x00, 0xff},
	{0xdb, 0x44, 0x37, 0xff},
	{0x7e, 0x57, 0xc2, 0xff},
}

// Chart draws the median readiness time of each form, grouped by image,
// with a whisker to the p95 and a dashed line at each image's physical
// limit, like the stargz-snapshotter start-up chart.
func Chart(w io.Writer, title string, rows []Row, limits []Limit) error {
	var images, forms []string
	for _, r := range rows {
		if !slices.Contains(images, r.Image) {
			images = append(images, r.Image)
		}
		if !slices.Contains(forms, r.Form) {
			forms = append(forms, r.Form)
		}
	}
	var max time.Duration
	for _, r := range rows {
		max = maxDur(max, P95(r.Ready))
	}
	for _, l := range limits {
		max = maxDur(max, l.Time)
	}
	if max <= 0 {
		max = time.Second
	}
	top := niceCeil(max.Seconds())

	const (
		barW, gap, groupGap = 56, 10, 60
		left, right         = 90, 30
		plotTop, plotH      = 70, 360
		scale               = 2
	)
	groupW := len(forms)*barW + (len(forms)-1)*gap
	legendW := 0
	for _, f := range forms {
		legendW += 30 + textWidth(f, scale) + 24
	}
	width := left + len(images)*groupW + (len(images)-1)*groupGap + right
	width = max2(width, left+legendW+right, left+textWidth(title, scale)+right)
	height := plotTop + plotH + 110
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	black := color.RGBA{0x20, 0x20, 0x20, 0xff}
	grid := color.RGBA{0xe0, 0xe0, 0xe0, 0xff}

	drawText(img, left, 16, title, scale, black)
	y := func(s float64) int { return plotTop + plotH - int(s/top*plotH+0.5) }
	for i := 0; i <= 5; i++ {
		v := top * float64(i) / 5
		yy := y(v)
		fill(img, image.Rect(left, yy, width-right, yy+1), grid)
		label := trimFloat(v) + "S"
		drawText(img, left-10-textWidth(label, scale), yy-7, label, scale, black)
	}
	fill(img, image.Rect(left, plotTop, left+1, plotTop+plotH+1), black)
	fill(img, image.Rect(left, plotTop+plotH, width-right, plotTop+plotH+1), black)

	lim := map[string]Limit{}
	for _, l := range limits {
		lim[l.Image] = l
	}
	type label struct {
		x, y int
		s    string
	}
	for gi, im := range images {
		var labels []label
		gx := left + 20 + gi*(groupW+groupGap)
		for fi, f := range forms {
			i := slices.IndexFunc(rows, func(r Row) bool { return r.Image == im && r.Form == f })
			if i < 0 || len(rows[i].Ready) == 0 {
				continue
			}
			r := rows[i]
			x := gx + fi*(barW+gap)
			m := Median(r.Ready).Seconds()
			fill(img, image.Rect(x, y(m), x+barW, plotTop+plotH), palette[fi%len(palette)])
			p := y(P95(r.Ready).Seconds())
			fill(img, image.Rect(x+barW/2, p, x+barW/2+2, y(m)), black)
			fill(img, image.Rect(x+barW/2-8, p, x+barW/2+10, p+2), black)
			v := fmt.Sprintf("%.1f", m)
			labels = append(labels, label{x + (barW-textWidth(v, scale))/2, p - 20, v})
		}
		if l, ok := lim[im]; ok && l.Time > 0 {
			ly := y(l.Time.Seconds())
			for x := gx - 10; x < gx+groupW+10; x += 12 {
				fill(img, image.Rect(x, ly, x+7, ly+2), palette[4])
			}
		}
		// Values go over the limit line, on white, to stay legible.
		for _, l := range labels {
			fill(img, image.Rect(l.x-2, l.y-2, l.x+textWidth(l.s, scale)+1, l.y+glyphH*scale), image.White)
			drawText(img, l.x, l.y, l.s, scale, black)
		}
		drawText(img, gx+(groupW-textWidth(im, scale))/2, plotTop+plotH+12, im, scale, black)
	}
	lx, ly := left, plotTop+plotH+50
	for fi, f := range forms {
		fill(img, image.Rect(lx, ly, lx+20, ly+16), palette[fi%len(palette)])
		drawText(img, lx+28, ly+1, f, scale, black)
		lx += 30 + textWidth(f, scale) + 24
	}
	if len(limits) > 0 {
		for x := left; x < left+40; x += 12 {
			fill(img, image.Rect(x, ly+36, x+7, ly+38), palette[4])
		}
		drawText(img, left+50, ly+30, "physical limit", scale, black)
	}
	return png.Encode(w, img)
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

func max2(xs ...int) int { return slices.Max(xs) }

// niceCeil rounds s up to 1, 2 or 5 times a power of ten.
func niceCeil(s float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(s)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= s {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
