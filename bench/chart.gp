# The chart of bench/run.sh: nestdock and the baseline relative to the floor,
# cell by cell (req/s above, p50 latency below; the floor is the line at 1).
# gnuplot -e "datafile='bench/results/latest.dat'; outfile='bench/results/latest.png'" bench/chart.gp
if (!exists("datafile")) datafile = 'bench/results/latest.dat'
if (!exists("outfile")) outfile = 'bench/results/latest.png'

set terminal pngcairo size 1400,900 font "sans,11" noenhanced
set output outfile
set datafile separator "\t"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics lc rgb "#dddddd"
set key above horizontal center samplen 3
set xtics rotate by -30 nomirror
set yrange [0:*]

set multiplot layout 2,1 title "nestdock and the kube-rs baseline, relative to the floor (same run; floor = 1)"

set title "req/s ÷ floor (higher is better)"
set ylabel "× floor"
plot datafile using 2:xtic(1) title "nestdock" lc rgb "#1f77b4", \
     '' using 3 title "baseline (kube-rs)" lc rgb "#ff7f0e", \
     1 with lines dt 2 lw 2 lc rgb "#333333" title "floor"

set title "p50 latency ÷ floor (lower is better)"
set ylabel "× floor"
plot datafile using 4:xtic(1) title "nestdock" lc rgb "#1f77b4", \
     '' using 5 title "baseline (kube-rs)" lc rgb "#ff7f0e", \
     1 with lines dt 2 lw 2 lc rgb "#333333" title "floor"

unset multiplot
