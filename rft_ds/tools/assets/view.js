(function(){
var D=JSON.parse(document.getElementById('rft-data').textContent);
var V=D.vocab,S=D.samples,P=D.page_size,pages=Math.max(1,Math.ceil(S.length/P)),page=0;
var box=document.getElementById('samples'),sel=document.getElementById('page'),
    where=document.getElementById('where'),prev=document.getElementById('prev'),next=document.getElementById('next');
var E={'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'};
function esc(s){return String(s).replace(/[&<>"]/g,function(c){return E[c];});}
function tt(s){return s===''?'<span class="empty"></span>':esc(s).replace(/\n/g,'<span class="nl"></span>\n');}
function fld(v){return (v>=0?'+':'-')+(Math.abs(v)/1000).toFixed(3);}
function pct(r,n){return n?(100*r/n).toFixed(1)+'%':'n/a';}
function turn(m){
  var ids=m.ids||[],lab=m.lab||'',ld=m.ld,h=[];
  for(var k=0;k<ids.length;k++){
    var r=lab.charCodeAt(k)===49,t=(ld&&ld[k]!==null)?'LD='+fld(ld[k])+' ':'';
    h.push('<span class="tok '+(r?'tok-r':'tok-b')+'" title="'+t+(r?'reasoning':'boilerplate')+' · token '+ids[k]+'">'+tt(V[ids[k]])+'</span>');
  }
  if(m.rest){h.push('<span class="tok tok-u" title="'+(m.nolabel?'not labeled: no masks turn for this message':'not labeled: past the turn\'s labeled tokens (truncated)')+'">'+tt(m.rest)+'</span>');}
  return h.join('');
}
function msg(m){
  var role=esc(m.role);
  if('text' in m){return '<div class="msg role-'+role+'"><div class="role">'+role+'</div><div class="text">'+(esc(m.text)||'<i>(empty)</i>')+'</div></div>';}
  var n=(m.ids||[]).length,r=(m.lab||'').split('1').length-1;
  var info=m.nolabel?'no labels':n+' tokens · '+pct(r,n)+' reasoning';
  if(m.rest&&!m.nolabel){info+=' · truncated';}
  return '<div class="msg role-assistant"><div class="role">assistant <small>message '+m.m+' · '+info+'</small></div><div class="toks">'+turn(m)+'</div></div>';
}
function sample(s,i){
  var share=s.n?100*s.r/s.n:0,notes='';
  for(var k=0;k<s.notes.length;k++){notes+='<div class="note">'+esc(s.notes[k])+'</div>';}
  var h='<section class="sample" id="s-'+i+'" data-id="'+esc(s.id)+'"><div class="shead"><span class="sidx">#'+(i+1)+'</span> <span class="sid">'+esc(s.id)+'</span><span class="sstat"><span class="bar'+(s.n?'':' none')+'"><span style="width:'+share.toFixed(1)+'%"></span></span>'+(s.n?pct(s.r,s.n)+' reasoning · '+s.n+' tokens':'no labeled tokens')+'</span></div>'+notes;
  for(var k=0;k<s.msgs.length;k++){h+=msg(s.msgs[k]);}
  return h+'</section>';
}
function show(p,focus){
  page=Math.max(0,Math.min(pages-1,p));
  var a=page*P,b=Math.min(S.length,a+P),h=[];
  for(var i=a;i<b;i++){h.push(sample(S[i],i));}
  box.innerHTML=h.join('');
  box.setAttribute('data-renderer','js');box.setAttribute('data-page',String(page+1));
  sel.value=String(page);prev.disabled=page===0;next.disabled=page===pages-1;
  where.textContent='page '+(page+1)+' of '+pages+' · samples '+(S.length?a+1:0)+'–'+b+' of '+S.length;
  if(history.replaceState){history.replaceState(null,'',focus!==undefined?'#id='+encodeURIComponent(S[focus].id):'#page='+(page+1));}
  if(focus!==undefined){var el=document.getElementById('s-'+focus);if(el){el.scrollIntoView();el.classList.add('flash');}}
  else{window.scrollTo(0,0);}
}
function find(q){
  q=q.trim();if(!q){return -1;}
  for(var i=0;i<S.length;i++){if(S[i].id===q){return i;}}
  var l=q.toLowerCase();
  for(var i=0;i<S.length;i++){if(S[i].id.toLowerCase().indexOf(l)>=0){return i;}}
  return -1;
}
function go(q){var i=find(q),m=document.getElementById('nomatch');
  m.textContent=i<0&&q.trim()?'no sample id matches':'';if(i>=0){show(Math.floor(i/P),i);}}
var o=[];
for(var p=0;p<pages;p++){o.push('<option value="'+p+'">'+(p+1)+' · '+esc(S[p*P]?S[p*P].id:'')+'</option>');}
sel.innerHTML=o.join('');
var dl=[];for(var i=0;i<S.length;i++){dl.push('<option value="'+esc(S[i].id)+'">');}
document.getElementById('ids').innerHTML=dl.join('');
prev.onclick=function(){show(page-1);};next.onclick=function(){show(page+1);};
sel.onchange=function(){show(+sel.value);};
document.getElementById('goform').onsubmit=function(e){e.preventDefault();go(document.getElementById('q').value);};
document.addEventListener('keydown',function(e){
  if(e.target.tagName==='INPUT'||e.target.tagName==='SELECT'||e.altKey||e.ctrlKey||e.metaKey){return;}
  if(e.key==='ArrowLeft'){show(page-1);}else if(e.key==='ArrowRight'){show(page+1);}});
var hs=decodeURIComponent(location.hash.slice(1)),mm;
if((mm=/^page=(\d+)$/.exec(hs))){show(+mm[1]-1);}
else if(hs.indexOf('id=')===0&&find(hs.slice(3))>=0){go(hs.slice(3));}
else{show(0);}
document.getElementById('nav').style.display='';
})();
