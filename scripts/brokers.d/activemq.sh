# ActiveMQ 5 (Debian package `activemq`) as the second STOMP server, on 127.0.0.1:61623
# and STOMP over TLS on 61624 (stomp+ssl://), with the certificate tls_certs (lib.sh) signs,
# in a PKCS12 keystore, and a truststore holding that CA: on 61624 a client certificate is
# not required, on 61625 it is (needClientAuth).
# The package's own instance speaks only OpenWire and wants an init system, so this script
# writes its own broker (STOMP connector, scheduler for delays, priority queues) under
# $QUEUEKIT_VAR/activemq and runs activemq.jar in the background with a modest heap.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
port=61623
tls_port=61624
mtls_port=61625
base="$QUEUEKIT_VAR/activemq"
pidfile="$base/activemq.pid"

write_config() {
  mkdir -p "$base/conf" "$base/data" "$base/log" "$base/tmp"
  local certs; certs=$(tls_certs)
  if [ ! -f "$base/conf/trust.p12" ] || [ "$certs/server.crt" -nt "$base/conf/trust.p12" ]; then
    rm -f "$base/conf/broker.p12" "$base/conf/trust.p12" "$base/conf/broker-cert.pem"
    openssl pkcs12 -export -name broker -in "$certs/server.crt" -inkey "$certs/server.key" \
      -certfile "$certs/ca.crt" -passout pass:queuekit -out "$base/conf/broker.p12"
    keytool -importcert -noprompt -alias queuekit-ca -file "$certs/ca.crt" -storetype PKCS12 \
      -keystore "$base/conf/trust.p12" -storepass queuekit >/dev/null 2>&1
  fi
  cat >"$base/conf/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
       http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="queuekit" useJmx="false"
          persistent="true" schedulerSupport="true" dataDirectory="$base/data"
          schedulerDirectory="$base/data/scheduler" tmpDataDirectory="$base/tmp">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- priority: the store keeps queues in priority order (JMS 0-9, 4 by default) -->
          <policyEntry queue="&gt;" prioritizedMessages="true" useCache="false"
                       expireMessagesPeriod="0"/>
          <policyEntry topic="&gt;" expireMessagesPeriod="0"/>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <persistenceAdapter>
      <kahaDB directory="$base/data/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage percentOfJvmHeap="60"/></memoryUsage>
        <storeUsage><storeUsage limit="2 gb"/></storeUsage>
        <tempUsage><tempUsage limit="1 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <sslContext>
      <sslContext keyStore="file:$base/conf/broker.p12" keyStorePassword="queuekit"
                  keyStoreType="PKCS12" trustStore="file:$base/conf/trust.p12"
                  trustStorePassword="queuekit" trustStoreType="PKCS12"/>
    </sslContext>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$port?transport.hbGracePeriodMultiplier=1.5"/>
      <transportConnector name="stomp+ssl" uri="stomp+ssl://127.0.0.1:$tls_port"/>
      <transportConnector name="stomp+ssl-clients" uri="stomp+ssl://127.0.0.1:$mtls_port?needClientAuth=true"/>
    </transportConnectors>
  </broker>
</beans>
XML
  cat >"$base/conf/log4j.properties" <<PROPS
# log4j 1.2 (the Debian package's ActiveMQ logs through slf4j-log4j12)
log4j.rootLogger=INFO, logfile
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.logfile=org.apache.log4j.RollingFileAppender
log4j.appender.logfile.file=$base/log/activemq.log
log4j.appender.logfile.maxFileSize=10MB
log4j.appender.logfile.maxBackupIndex=2
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
PROPS
}

listening() {  # every connector answers (one missing: a broker from an older config)
  port_open 127.0.0.1 "$port" && port_open 127.0.0.1 "$tls_port" && port_open 127.0.0.1 "$mtls_port"
}

running_pids() {  # brokers this script started: from this checkout's pid file, or from
  # another checkout's $QUEUEKIT_VAR (e.g. CI's fresh clone), found by their command line
  local pid
  {
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill -0 "$pid" 2>/dev/null && grep -q activemq.jar "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
    fi
    for cmdline in /proc/[0-9]*/cmdline; do
      { tr '\0' ' ' <"$cmdline"; } 2>/dev/null \
        | grep -q "activemq.jar start xbean:file:.*/activemq/conf/activemq.xml" \
        && basename "$(dirname "$cmdline")"
    done
  } | sort -u
}

start() {
  apt_install activemq openssl
  write_config
  log "starting ActiveMQ (log: $base/log/activemq.log)"
  cd "$base"
  setsid nohup java -Xms64m -Xmx512m -XX:+UseSerialGC \
    -Djava.io.tmpdir="$base/tmp" \
    -Dactivemq.home=/usr/share/activemq -Dactivemq.base="$base" \
    -Dactivemq.conf="$base/conf" -Dactivemq.data="$base/data" \
    -Dlog4j.configuration="file:$base/conf/log4j.properties" \
    -jar /usr/share/activemq/bin/activemq.jar start "xbean:file:$base/conf/activemq.xml" \
    >"$base/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local pid waited=0; pid=$(cat "$pidfile")
  until listening; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -ge 1200 ]; then
      log "ActiveMQ did not start (pid $pid); last log lines:"
      tail -n 30 "$base/log/activemq.log" "$base/log/stdout.log" >&2 || true
      return 1
    fi
    sleep 0.1; waited=$((waited + 1))
  done
  log "activemq answers on 127.0.0.1:$port (stomp), :$tls_port and :$mtls_port (stomp+ssl)"
}

stop() {
  local pid
  for pid in $(running_pids); do
    log "stopping ActiveMQ (pid $pid)"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "ActiveMQ did not stop in 30s; killing it"; kill -9 "$pid"; }
  done
  rm -f "$pidfile"
}

case "${1:-up}" in
  up) listening && { log "activemq answers on 127.0.0.1:$port"; exit 0; }
      stop; start ;;
  restart) stop; start ;;
  urls) echo "stomp://guest:guest@127.0.0.1:$port"  # worker conformance passes on both
        echo "stomp+ssl://guest:guest@localhost:$tls_port?ca=$QUEUEKIT_VAR/tls/ca.crt" ;;
  *) echo "usage: $0 up|restart|urls" >&2; exit 2 ;;
esac
