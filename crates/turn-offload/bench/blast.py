"""Sender for bench/run.sh: allocates on the turn-server (TURN REST credentials for the
secret "S", realm "test"), binds channel 0x4000 to the peer, then sends ChannelData of
PAYLOAD bytes as fast as one socket can for SECONDS. Usage: blast.py SECONDS [PAYLOAD]"""
import socket, struct, os, hmac, hashlib, base64, time, sys
SECRET=b"S"; REALM=b"test"; SERVER=("10.0.1.1",3478); PEER=("10.0.2.2",3480)
COOKIE=0x2112A442
def attr(t,v): 
    pad=(4-len(v)%4)%4
    return struct.pack("!HH",t,len(v))+v+b"\0"*pad
def msg(mtype,tid,attrs,key=None):
    body=b"".join(attrs)
    if key:
        ln=len(body)+24
        hdr=struct.pack("!HHI",mtype,ln,COOKIE)+tid
        mac=hmac.new(key,hdr+body,hashlib.sha1).digest()
        body+=attr(0x0008,mac)
    return struct.pack("!HHI",mtype,len(body),COOKIE)+tid+body
def parse(b):
    t,l=struct.unpack("!HH",b[:4]); out={}; i=20
    while i<20+l:
        at,al=struct.unpack("!HH",b[i:i+4]); out[at]=b[i+4:i+4+al]; i+=4+al+(4-al%4)%4
    return t,out
def xaddr(ip,port):
    return struct.pack("!BBH",0,1,port^(COOKIE>>16))+struct.pack("!I",struct.unpack("!I",socket.inet_aton(ip))[0]^COOKIE)
user=("%d:bench"%(int(time.time())+3600)).encode()
pw=base64.b64encode(hmac.new(SECRET,user,hashlib.sha1).digest())
key=hashlib.md5(user+b":"+REALM+b":"+pw).digest()
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("10.0.1.2",0)); s.settimeout(2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4<<20)
rt=attr(0x0019,b"\x11\0\0\0")
s.sendto(msg(0x0003,os.urandom(12),[rt]),SERVER); t,a=parse(s.recv(2048)); nonce=a[0x0015]
auth=[attr(0x0006,user),attr(0x0014,REALM),attr(0x0015,nonce)]
s.sendto(msg(0x0003,os.urandom(12),[rt]+auth,key),SERVER); t,a=parse(s.recv(2048)); assert t==0x0103,hex(t)
s.sendto(msg(0x0009,os.urandom(12),[attr(0x000C,b"\x40\0\0\0"),attr(0x0012,xaddr(*PEER))]+auth,key),SERVER); t,a=parse(s.recv(2048)); assert t==0x0109,hex(t)
size=int(sys.argv[2]) if len(sys.argv)>2 else 100
cd=struct.pack("!HH",0x4000,size)+b"x"*size
secs=float(sys.argv[1]); n=0; end=time.time()+secs; send=s.sendto
s.setblocking(False)
while True:
    for _ in range(1000):
        try: send(cd,SERVER); n+=1
        except BlockingIOError: pass
    if time.time()>end: break
import resource
r = resource.getrusage(resource.RUSAGE_SELF)
print("sent %d sender_cpu_s %.2f" % (n, r.ru_utime + r.ru_stime))
