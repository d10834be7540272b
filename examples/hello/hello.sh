#!/bin/sh
# Start-up work a tracer records: a script, its interpreter and one data file.
cat /etc/hello/greeting.txt
echo "ready"
